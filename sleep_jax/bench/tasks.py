"""Examples per second of each task's data pipeline on one CPU core; one JSON line per task.

    python -m sleep_jax.bench.tasks [--examples=4000] [--batch_size=64] [--size=paper]

Reads training batches through `task.batches` (generation, tokenisation and batching in this
process: grain's read-ahead threads, no worker processes) after pinning the process to one CPU
core, so the threads share that core. Targets: >= 2000
examples/s for rule110 and depo, >= 100/s for gsm_infinite (2000-3300 token problems).
"""
from __future__ import annotations

import json
import os
import time

from absl import flags

from sleep_jax import cli
from sleep_jax.tasks import TASK_NAMES, default_config, make

TARGET_PER_S = {"rule110": 2000, "depo": 2000, "gsm_infinite": 100}


def pin_to_one_core() -> int | None:
    """Restricts this process to its lowest allowed CPU core; returns it (None where unsupported)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def measure(task_name: str, *, examples: int, batch_size: int, size: str = "paper") -> dict:
    """Times reading at least `examples` training examples of a task in batches of `batch_size`."""
    task = make(default_config(task_name, size))
    steps = -(-examples // batch_size)
    # The clock starts before the iterator exists: grain's read-ahead threads start with it.
    start = time.perf_counter()
    batches = iter(task.batches("train", seed=0, batch_size=batch_size))
    for _ in range(steps):
        next(batches)
    seconds = time.perf_counter() - start
    return {"bench": "tasks", "task": task_name, "size": size, "seq_len": task.layout.seq_len,
            "batch_size": batch_size, "examples": steps * batch_size, "seconds": round(seconds, 4),
            "examples_per_s": round(steps * batch_size / seconds, 1),
            "target_per_s": TARGET_PER_S[task_name]}


def _define_flags() -> None:
    flags.DEFINE_integer("examples", 4000, "Examples to read per task.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Examples per batch.", lower_bound=1)
    flags.DEFINE_enum("size", "paper", ["paper", "tiny"], "Config size of every task.")


def main(argv: list[str]) -> None:
    del argv  # cli.run: none left
    core = pin_to_one_core()
    for name in TASK_NAMES:
        result = measure(name, examples=flags.FLAGS.examples, batch_size=flags.FLAGS.batch_size,
                         size=flags.FLAGS.size)
        print(json.dumps({**result, "cpu_core": core}), flush=True)


if __name__ == "__main__":
    cli.run(main, _define_flags)
