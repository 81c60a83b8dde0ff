"""Memory and time of one loss+grad step as the sleep deepens; one JSON line per (passes, remat,
halting rule).

    python -m sleep_jax.bench.sleep [--passes=1,2,4,8] [--remat=none,pass,window] [--truncate_passes=0,1] [--batch=8]
        [--window=64] [--sleeping_windows=3] [--d_model=128] [--halting=fixed,converged,learned]
        [--tolerance=1e-3] [--halt_bias=-2]

Each setting builds a small hybrid model (pattern AGAG) and a sequence of `sleeping_windows`
consolidation windows followed by one prediction window, jits `value_and_grad` of
`sequence_loss`, and reports:

- peak_bytes: from XLA's compiled memory analysis, argument + output - alias + temp bytes, where
  temp is XLA's heap for every intermediate of the step after buffer assignment (buffers whose
  lifetimes do not overlap share space), so it is the step's peak working set on the device;
- carry_bytes: one pass's carry (the window's hidden states [B, L, D] + the looped GDN layers'
  recurrent state) times the number of sleeping windows: what each extra pass must keep for the
  backward pass when passes are rematerialised;
- step_ms: median wall time of the compiled step over `repeats` runs (after one warm-up run);
- compile_s: time to lower and compile the step;
- sleep_ms_per_window, mean_passes: the eval-time sleep (`consolidate_run(stop_early=True)`: an
  adaptive window really stops) over the same consolidation windows, median wall time divided by
  the windows, and the passes they ran. Training always runs N passes (the rule masks what follows a
  stop), so step_ms shows what a rule's bookkeeping costs; sleep_ms_per_window what stopping saves.
  On this random model "converged" stops where `--tolerance` says, and "learned" where the
  halting head's bias `--halt_bias` puts the stop (a new head's -2 runs every pass up to N = 5).
"""
from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from sleep_jax import cli
from sleep_jax.bench.models import bench_model_config
from sleep_jax.bench.programs import peak_bytes
from sleep_jax.model import HybridModel
from sleep_jax.sleep import SleepConfig, consolidate_run, initial_past, sequence_loss


def carry_bytes(model: HybridModel, batch: int, sleep: SleepConfig, kinds: str) -> int:
    """Bytes of one pass's carry (window hidden states + looped recurrent state) x sleeping windows."""
    hidden = batch * sleep.window * model.config.d_model * model.config.compute_dtype.itemsize
    looped = model.init_state(batch, model.config.layer_groups[1])
    state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(looped))
    return (hidden + state) * kinds.count("C")


def compile_step(model: HybridModel, tokens, loss_mask, sleep: SleepConfig, kinds: str):
    """(compiled loss+grad step, its arguments, seconds to lower and compile)."""
    graphdef, params = nnx.split(model)

    def loss(params, tokens, loss_mask):
        return sequence_loss(nnx.merge(graphdef, params), tokens, loss_mask, sleep=sleep, kinds=kinds)[0]

    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens, loss_mask).compile()
    return compiled, (params, tokens, loss_mask), time.perf_counter() - start


def _median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def sleep_only(model: HybridModel, tokens, sleep: SleepConfig, windows: int, repeats: int) -> dict:
    """Eval-time sleep over the first `windows` windows of tokens [B, T]: median ms per window and
    the mean passes the windows ran."""
    batch = tokens.shape[0]
    by_window = tokens[:, :windows * sleep.window].reshape(batch, windows, sleep.window).swapaxes(0, 1)
    state, past = model.init_state(batch), initial_past(model, batch, sleep)
    run = jax.jit(lambda x: consolidate_run(model, x, 0, state, past, sleep=sleep, stop_early=True))
    passes = run(by_window)[2].passes
    return {"sleep_ms_per_window": round(_median_ms(run, by_window, repeats=repeats) / windows, 3),
            "mean_passes": round(float(np.mean(passes)), 3)}


def measure(model: HybridModel, *, batch: int, sleep: SleepConfig, sleeping_windows: int, repeats: int = 5,
            run: bool = True) -> dict:
    """One JSON-able record for a model, batch and sleep setting (run=False: memory only)."""
    kinds = "C" * sleeping_windows + "P"
    steps = sleep.window * len(kinds)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, model.config.vocab_size, (batch, steps)), jnp.int32)
    loss_mask = jnp.zeros((batch, steps), jnp.int32).at[:, -sleep.window:-1].set(1)
    compiled, args, compile_s = compile_step(model, tokens, loss_mask, sleep, kinds)
    record = {"passes": sleep.passes, "remat": sleep.remat, "truncate_passes": sleep.truncate_passes,
              "halting": sleep.halting, "peak_bytes": peak_bytes(compiled),
              "carry_bytes": carry_bytes(model, batch, sleep, kinds), "compile_s": round(compile_s, 3),
              "batch": batch, "window": sleep.window, "kinds": kinds, "backend": jax.default_backend()}
    if run:
        record["step_ms"] = round(_median_ms(compiled, *args, repeats=repeats), 3)
        record.update(sleep_only(model, tokens, sleep, sleeping_windows, repeats))
    return record


FLAGS = flags.FLAGS
flags.DEFINE_list("passes", ["1", "2", "4", "8"], "Numbers of passes N to measure.")
flags.DEFINE_list("remat", ["none", "pass", "window"], "Remat settings to measure.")
flags.DEFINE_list("truncate_passes", ["0"], "sleep.truncate_passes values to measure (0: full backprop).")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("window", 64, "Window length L.")
flags.DEFINE_integer("sleeping_windows", 3, "Consolidation windows before the prediction window.")
flags.DEFINE_integer("d_model", 128, "Model width.")
flags.DEFINE_string("impl", "auto", "Delta rule implementation.")
flags.DEFINE_integer("repeats", 5, "Timed runs per setting (median reported).")
flags.DEFINE_list("halting", ["fixed"], "sleep.halting rules to measure (fixed, converged, learned).")
flags.DEFINE_float("tolerance", 1e-3, "sleep.tolerance of the converged rule.")
flags.DEFINE_float("halt_bias", -2.0, "The halting head's bias (its other weights are zero): where learned stops.")
cli.check_flags_as_fields(SleepConfig, "passes", "remat", "truncate_passes", "window", "halting", "tolerance")


def main(argv):
    del argv
    learned = "learned" in FLAGS.halting
    model = HybridModel(bench_model_config(FLAGS.d_model, FLAGS.impl, halting_head=learned), rngs=nnx.Rngs(0))
    if learned:
        model.halting_head.weight[...] = model.halting_head.weight[...].at[-1, 0].set(FLAGS.halt_bias)   # the bias
    for remat in FLAGS.remat:
        for truncate in FLAGS.truncate_passes:
            for passes in FLAGS.passes:
                for rule in FLAGS.halting:
                    sleep = SleepConfig(passes=int(passes), window=FLAGS.window, remat=remat,
                                        truncate_passes=int(truncate), halting=rule, tolerance=FLAGS.tolerance)
                    print(json.dumps(measure(model, batch=FLAGS.batch, sleep=sleep,
                                             sleeping_windows=FLAGS.sleeping_windows, repeats=FLAGS.repeats)),
                          flush=True)


if __name__ == "__main__":
    cli.run(main)
