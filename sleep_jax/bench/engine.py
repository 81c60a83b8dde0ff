"""Wake latency, sleep time and memory of the inference engine; one JSON line per (passes, slots).

    python -m sleep_jax.bench.engine [--passes=1,2,4,8] [--slots=1,8] [--window=64]
        [--decode_windows=2] [--d_model=128] [--eviction=hard]
        [--measures=decode,batched_sleep,first_token] [--batched_sleep_slots=8] [--prompt=512]
        [--first_token_window=2048] [--repeats=7]
    python -m sleep_jax.bench.engine --measures=halting --workdir=RUN [--stream_windows=16]

For each number of slots it builds the small AGAG model of `bench.models` and one `Engine` per N,
starts every slot at a different fill level, generates `decode_windows` windows of tokens in all
slots together (so windows fill, and slots sleep, during decoding), the engines taking turns step
by step, each N first in turn (a shared machine's load then falls on every N alike), and reports:

- decode_ms_per_token: median wall time of one batched wake step (one token in every slot),
  sleeps excluded (the claim: it does not grow with N);
- decode_tokens_per_s: slots / that time;
- sleep_ms_per_window: median time of one slot's sleep (N passes over its window; expected linear
  in N), over the sleeps while decoding and while slot 0 reads 100 windows;
- device_bytes_after_{10,100}_windows: bytes of all live jax arrays (every engine of the run) after
  slot 0 has read 10 and 100 windows (expected equal: a slot's state does not grow with the stream), and
  rss_mb_after_{10,100}_windows: the process's resident memory at the same points.

Two more rows ("measure" says which; both time A and B alternately in one process, `--repeats`
times, and report min / median and the load average; pin the process to one core with `taskset`
and run XLA single-threaded for numbers worth comparing):

- "batched_sleep": `--batched_sleep_slots` slots (8) of the small model fill their windows
  together (one `prefill_many` of a window each: one batched sleep call) against the same slots
  filling one after the other (one sleep call each): sleep_ms_per_window of each, and their ratio.
- "first_token": time to first token of a `--prompt`-token prompt (512) read by a fresh slot of
  the mid-size model (`bench.models.mid_model_config`) in one window of `--first_token_window`
  tokens (one parallel span), against the model's own parallel forward of the same tokens
  (`HybridModel.__call__`, jitted): ms of each and their ratio.
- "halting" (needs `--workdir`, a trained run): adaptive sleep against fixed N on a stream mixing
  padding windows (every token the task's `<pad>`) and content windows (the first windows of the
  task's eval examples), `--stream_windows` of each in turn: one engine with the run's sleep
  (its `sleep.halting` rule) and one with fixed N = the run's `sleep.passes`, window by window
  alternating; for each engine and window kind the sleep ms per window (min / median) and the
  mean passes, and the adaptive / fixed ratio of the medians.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from sleep_jax import cli
from sleep_jax.bench.models import bench_model_config, mid_model_config
from sleep_jax.infer import Engine
from sleep_jax.model import HybridModel
from sleep_jax.sleep import SleepConfig

MEASURES = ("decode", "batched_sleep", "first_token", "halting")
DEFAULT_MEASURES = MEASURES[:-1]   # "halting" needs a trained run (--workdir)


def resident_mb() -> float:
    """The process's resident set size in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def device_bytes() -> int:
    return sum(x.nbytes for x in jax.live_arrays())


def measure(passes: list[int], slots: int, *, window: int, decode_windows: int, d_model: int,
            eviction: str) -> list[dict]:
    """One row per N in `passes`, with `slots` active slots. The engines for the different N are
    measured in turns, step by step and window by window, so that a change in the machine's load
    (a shared CPU) falls on every N alike."""
    model = HybridModel(bench_model_config(d_model), rngs=nnx.Rngs(0))
    vocab, everyone = model.config.vocab_size, list(range(slots))
    rng = np.random.default_rng(0)
    engines, sleep_seconds, step_ms = {}, {n: [] for n in passes}, {n: [] for n in passes}
    for n in passes:
        engines[n] = Engine(model, SleepConfig(passes=n, window=window, eviction=eviction), slots=slots,
                            on_sleep=lambda slot, index, seconds, n=n: sleep_seconds[n].append(seconds))
        for slot in everyone:   # staggered fill levels, so slots sleep at different steps
            engines[n].prefill(slot, rng.integers(0, vocab, 1 + slot * window // slots))
        engines[n].generate(everyone, window)              # warm-up: compiles wake and sleep
        sleep_seconds[n].clear()
    for step in range(decode_windows * window):
        for n in passes[step % len(passes):] + passes[:step % len(passes)]:   # each N first in turn
            engine = engines[n]
            before = engine.stats["sleep_seconds"]
            start = time.perf_counter()
            engine.generate(everyone, 1)
            step_ms[n].append(1000 * (time.perf_counter() - start - (engine.stats["sleep_seconds"] - before)))
    memory = {n: {} for n in passes}
    for engine in engines.values():
        engine.reset(0)
    for windows in range(1, 101):                          # slot 0 reads 100 windows
        for n, engine in engines.items():
            engine.prefill(0, rng.integers(0, vocab, window))
            if windows in (10, 100):
                memory[n][f"device_bytes_after_{windows}_windows"] = device_bytes()
                memory[n][f"rss_mb_after_{windows}_windows"] = round(resident_mb(), 1)
    rows = []
    for n in passes:
        decode_ms = statistics.median(step_ms[n])
        rows.append({
            "measure": "decode", "passes": n, "slots": slots, "window": window, "d_model": d_model, "eviction": eviction,
            "decode_ms_per_token": round(decode_ms, 3),
            "decode_tokens_per_s": round(1000 * slots / decode_ms, 1),
            "sleep_ms_per_window": round(1000 * statistics.median(sleep_seconds[n]), 3),
            "sleeps_timed": len(sleep_seconds[n]),
            **memory[n],
            "backend": jax.default_backend(),
        })
    return rows


def min_median(seconds: list[float], scale: float = 1000.0) -> dict:
    """{"min", "median"} of `seconds`, times `scale` (ms by default), rounded."""
    return {"min": round(scale * min(seconds), 3), "median": round(scale * statistics.median(seconds), 3)}


def run_context() -> dict:
    """What a timing depends on beside the code: the load average and the threads available."""
    return {"load_average": [round(x, 2) for x in os.getloadavg()], "cpus_allowed": len(os.sched_getaffinity(0)),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "backend": jax.default_backend()}


def measure_batched_sleep(slots: int, *, passes: int, window: int, d_model: int, eviction: str,
                          repeats: int) -> dict:
    """Sleep time per window when `slots` slots fill their windows together (one `prefill_many`:
    one batched sleep call) against one after the other (one `prefill` and one sleep call each),
    the two alternating, the first of each pair alternating too."""
    model = HybridModel(bench_model_config(d_model), rngs=nnx.Rngs(0))
    engine = Engine(model, SleepConfig(passes=passes, window=window, eviction=eviction), slots=slots)
    rng = np.random.default_rng(0)
    everyone = list(range(slots))

    def together():
        engine.prefill_many({slot: rng.integers(0, model.config.vocab_size, window) for slot in everyone})

    def one_by_one():
        for slot in everyone:
            engine.prefill(slot, rng.integers(0, model.config.vocab_size, window))

    sides = {"together": together, "one_by_one": one_by_one}
    for side in sides.values():    # compile
        side()
    seconds, calls = {name: [] for name in sides}, {}
    for repeat in range(repeats):
        for name in (list(sides) if repeat % 2 == 0 else list(sides)[::-1]):
            before = dict(engine.stats)
            sides[name]()
            seconds[name].append((engine.stats["sleep_seconds"] - before["sleep_seconds"]) / slots)
            calls[name] = engine.stats["sleep_calls"] - before["sleep_calls"]
    return {"measure": "batched_sleep", "slots": slots, "passes": passes, "window": window, "d_model": d_model,
            "eviction": eviction, "repeats": repeats, "sleep_calls_per_round": calls,
            "sleep_ms_per_window_together": min_median(seconds["together"]),
            "sleep_ms_per_window_one_by_one": min_median(seconds["one_by_one"]),
            "ratio_together_over_one_by_one": {
                "min": round(min(seconds["together"]) / min(seconds["one_by_one"]), 3),
                "median": round(statistics.median(seconds["together"]) / statistics.median(seconds["one_by_one"]), 3)},
            **run_context()}


def measure_first_token(prompt: int, *, window: int, repeats: int, config=None) -> dict:
    """Time to first token of a `prompt`-token prompt read by a fresh engine slot (window `window`
    >= prompt + 1: one parallel span, no sleep) against the model's own jitted parallel forward of
    the same tokens; the two alternate, the first of each pair alternating too."""
    config = mid_model_config() if config is None else config
    if window <= prompt:
        raise ValueError(f"first_token_window={window} must exceed prompt={prompt} (one window, no sleep)")
    model = HybridModel(config, rngs=nnx.Rngs(0))
    engine = Engine(model, SleepConfig(passes=1, window=window), slots=1)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, prompt).astype(np.int32)
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x)[0])
    batch = jnp.asarray(tokens[None])

    def engine_side() -> float:
        engine.reset(0)
        start = time.perf_counter()
        engine.prefill(0, tokens)
        return time.perf_counter() - start

    def forward_side() -> float:
        start = time.perf_counter()
        jax.block_until_ready(forward(params, batch))
        return time.perf_counter() - start

    sides = {"engine": engine_side, "forward": forward_side}
    for side in sides.values():    # compile
        side()
    seconds = {name: [] for name in sides}
    for repeat in range(repeats):
        for name in (list(sides) if repeat % 2 == 0 else list(sides)[::-1]):
            seconds[name].append(sides[name]())
    np.testing.assert_allclose(engine.logits(0), np.asarray(forward(params, batch))[0, -1], atol=1e-3, rtol=1e-3)
    return {"measure": "first_token", "prompt": prompt, "window": window, "d_model": config.d_model,
            "pattern": config.pattern, "vocab": config.vocab_size, "repeats": repeats,
            "engine_prefill_ms": min_median(seconds["engine"]), "model_forward_ms": min_median(seconds["forward"]),
            "ratio_engine_over_forward": {
                "min": round(min(seconds["engine"]) / min(seconds["forward"]), 3),
                "median": round(statistics.median(seconds["engine"]) / statistics.median(seconds["forward"]), 3)},
            **run_context()}


def measure_halting(model, sleep: SleepConfig, task, *, stream_windows: int) -> list[dict]:
    """Sleep time per window and passes, adaptive (`sleep`) against fixed N = sleep.passes, on a
    stream of padding and content windows in turn (module docstring); one row per window kind."""
    from sleep_jax.train.data import eval_batches

    if sleep.halting == "fixed":
        raise ValueError("--workdir: the run sleeps a fixed N (sleep.halting='fixed'); the halting measure "
                         "compares an adaptive rule with fixed N")
    length = sleep.window
    contents = []
    for batch in eval_batches(task, batch_size=stream_windows, seed=0):
        contents += [row[:length] for row in np.asarray(batch["tokens"])]
        if len(contents) >= stream_windows:
            break
    padding = np.full(length, task.vocab.pad_id, np.int32)
    engines = {"adaptive": Engine(model, sleep, slots=1),
               "fixed": Engine(model, dataclasses.replace(sleep, halting="fixed"), slots=1)}
    for engine in engines.values():      # compile
        engine.prefill(0, padding)
    samples = {(name, kind): {"seconds": [], "passes": []} for name in engines for kind in ("padding", "content")}
    for i in range(stream_windows):
        for turn, (kind, window) in enumerate((("padding", padding), ("content", contents[i % len(contents)]))):
            # who sleeps first alternates from window to window
            for name in (list(engines) if (i + turn) % 2 == 0 else list(engines)[::-1]):
                engine = engines[name]
                before = dict(engine.stats)
                engine.prefill(0, window)
                samples[name, kind]["seconds"].append(engine.stats["sleep_seconds"] - before["sleep_seconds"])
                samples[name, kind]["passes"].append(engine.stats["sleep_passes"] - before["sleep_passes"])
    rows = []
    for kind in ("padding", "content"):
        row = {"measure": "halting", "window_kind": kind, "halting": sleep.halting, "passes": sleep.passes,
               "window": length, "windows": stream_windows}
        for name in engines:
            row[f"{name}_sleep_ms_per_window"] = min_median(samples[name, kind]["seconds"])
            row[f"{name}_mean_passes"] = round(float(np.mean(samples[name, kind]["passes"])), 3)
        row["ratio_adaptive_over_fixed"] = round(row["adaptive_sleep_ms_per_window"]["median"]
                                                 / row["fixed_sleep_ms_per_window"]["median"], 3)
        rows.append({**row, **run_context()})
    return rows


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags (defined only when run as a command: `bench.sleep` has flags of the same
    names, and tests import both modules)."""
    flags.DEFINE_list("passes", ["1", "2", "4", "8"], "Sleep passes N.", flag_values=flag_values)
    flags.DEFINE_list("slots", ["1", "8"], "Active slots.", flag_values=flag_values)
    flags.DEFINE_integer("window", 64, "Window L (tokens).", flag_values=flag_values)
    flags.DEFINE_integer("decode_windows", 2, "Windows of tokens to generate per slot.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("d_model", 128, "Model width.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_enum("eviction", "hard", ["hard", "sliding"], "Eviction.", flag_values=flag_values)
    flags.DEFINE_list("measures", list(DEFAULT_MEASURES), f"What to measure, of {MEASURES} (module docstring).",
                      flag_values=flag_values)
    flags.register_validator("measures", lambda names: set(names) <= set(MEASURES),
                             f"--measures must name some of {MEASURES}", flag_values=flag_values)
    flags.DEFINE_integer("batched_sleep_slots", 8, "Slots filling together (batched_sleep).", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("prompt", 512, "Prompt tokens (first_token).", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("first_token_window", 2048, "Window of the first_token engine (> prompt).",
                         lower_bound=2, flag_values=flag_values)
    flags.DEFINE_integer("repeats", 7, "Timed repeats of each side (batched_sleep, first_token).", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "A trained run with an adaptive sleep.halting (halting).",
                        flag_values=flag_values)
    flags.DEFINE_integer("stream_windows", 16, "Padding and content windows each in the stream (halting).",
                         lower_bound=1, flag_values=flag_values)
    cli.check_flags_as_fields(SleepConfig, "passes", "window", flag_values=flag_values)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    passes = [int(n) for n in FLAGS.passes]
    if "decode" in FLAGS.measures:
        for slots in map(int, FLAGS.slots):
            for row in measure(passes, slots, window=FLAGS.window, decode_windows=FLAGS.decode_windows,
                               d_model=FLAGS.d_model, eviction=FLAGS.eviction):
                print(json.dumps(row), flush=True)
    if "batched_sleep" in FLAGS.measures:
        for n in passes:
            print(json.dumps(measure_batched_sleep(FLAGS.batched_sleep_slots, passes=n, window=FLAGS.window,
                                                   d_model=FLAGS.d_model, eviction=FLAGS.eviction,
                                                   repeats=FLAGS.repeats)), flush=True)
    if "first_token" in FLAGS.measures:
        print(json.dumps(measure_first_token(FLAGS.prompt, window=FLAGS.first_token_window, repeats=FLAGS.repeats)),
              flush=True)
    if "halting" in FLAGS.measures:
        from sleep_jax.generate import load_run

        if FLAGS.workdir is None:
            raise ValueError("--measures=halting needs --workdir (a run trained with an adaptive sleep.halting)")
        model, sleep, task, _ = load_run(FLAGS.workdir, need_task=True)
        for row in measure_halting(model, sleep, task, stream_windows=FLAGS.stream_windows):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    cli.run(main, define_flags)
