"""Wake latency, sleep time and memory of the inference engine; one JSON line per (passes, slots).

    python -m sleep_jax.bench.engine [--passes=1,2,4,8] [--slots=1,8] [--window=64]
        [--decode_windows=2] [--d_model=128] [--eviction=hard]

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
"""
from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
from absl import flags
from flax import nnx

from sleep_jax import cli
from sleep_jax.bench.models import bench_model_config
from sleep_jax.infer import Engine
from sleep_jax.model import HybridModel
from sleep_jax.sleep import SleepConfig



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
            "passes": n, "slots": slots, "window": window, "d_model": d_model, "eviction": eviction,
            "decode_ms_per_token": round(decode_ms, 3),
            "decode_tokens_per_s": round(1000 * slots / decode_ms, 1),
            "sleep_ms_per_window": round(1000 * statistics.median(sleep_seconds[n]), 3),
            "sleeps_timed": len(sleep_seconds[n]),
            **memory[n],
            "backend": jax.default_backend(),
        })
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
    cli.check_flags_as_fields(SleepConfig, "passes", "window", flag_values=flag_values)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    for slots in map(int, FLAGS.slots):
        for row in measure([int(n) for n in FLAGS.passes], slots, window=FLAGS.window,
                           decode_windows=FLAGS.decode_windows, d_model=FLAGS.d_model, eviction=FLAGS.eviction):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    cli.run(main, define_flags)
