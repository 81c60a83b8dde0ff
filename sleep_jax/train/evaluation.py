"""Evaluation: greedy single-pass predictions on the eval split, scored by the task's evaluator.

Writes ``<workdir>/eval.json`` (``eval-<tag>.json`` for an eval with other settings than the
run's) — ``{"task", "passes", "step", "accuracy", "by_difficulty", "chance",
"examples", ...}`` (every key of the evaluator's result is kept; under adaptive sleep also
``halting`` with its keys and ``mean_passes``) — and ``<workdir>/eval.png``:
accuracy by difficulty against chance and 1.0, held-out loss, and the run's training loss. Those files
hold the eval of the run's newest step: an eval of an older step (a checkpoint fallback, or a
step below the one the file already holds) writes ``eval@step<k>.json`` / ``.png``
(``eval-<tag>@step<k>``) instead, never over a later one.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from sleep_jax.files import write_text_atomic
from sleep_jax.plot import plot_runs, training_loss
from sleep_jax.windows import kinds_from_mask
from sleep_jax.train.data import eval_batches, host_to_global


def evaluate(predicts: Callable[[str], Callable], params: Any, task: Any, *, batch_size: int, seed: int,
             batch_sharding: jax.sharding.NamedSharding) -> dict:
    """Scores the task's eval split; returns the evaluator's result dict and ``chance``
    (``Task.chance``: the accuracy of a uniform guess).

    Args:
      predicts: ``kinds -> `` jitted ``(params, {"tokens", "loss_mask"}) -> {"predictions": int32
        [B, T], "nll": float32 [B, T], "passes": int32 [B, C]}`` (``sleep.sequence_scores``) for
        batches of those window kinds (`sleep.kinds_from_mask` of each batch: eval batches hold
        examples whose answers start in the same window).
    """
    evaluator = task.evaluator()
    for batch in eval_batches(task, batch_size=batch_size, seed=seed):
        predict = predicts(kinds_from_mask(batch["loss_mask"], task.layout.window))
        scores = predict(params, host_to_global(batch, batch_sharding))
        if jax.process_count() > 1:
            scores = multihost_utils.process_allgather(scores, tiled=True)
        evaluator.add(batch, np.asarray(scores["predictions"]), nll=np.asarray(scores["nll"]),
                      passes=np.asarray(scores["passes"]))
    return {**evaluator.result(), "chance": task.chance()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def write_eval(workdir: str, result: dict, *, task_name: str, passes: int, step: int,
               name: str = "eval", newest_step: int | None = None, halting: dict | None = None) -> tuple[dict, str]:
    """Writes ``<name>.json`` and ``<name>.png`` into ``workdir`` (atomically); returns the JSON
    dict and the JSON file's path. ``name`` is ``eval`` for the run's own settings,
    ``eval-<tag>`` for others. An eval of a step below ``newest_step`` (the newest checkpoint's)
    or below the step ``<name>.json`` holds goes to ``<name>@step<step>`` instead. ``halting``
    (``SleepConfig.halting_record``: the adaptive rule and its keys, {} for fixed N) goes into
    the record beside ``passes``.

    The caller holds the run lock (``record.lock_run``), so no other writer comes between the
    read of the held step and the write."""
    record = {"task": task_name, "passes": int(passes), "step": int(step), **(halting or {}),
              **_jsonable(result)}
    for key in ("accuracy", "by_difficulty", "examples"):
        if key not in record:
            raise ValueError(f"evaluator result lacks {key!r}: got keys {sorted(result)}")
    held = _recorded_step(os.path.join(workdir, f"{name}.json"))
    if step < max(newest_step or 0, held or 0):
        name = f"{name}@step{step}"
    path = os.path.join(workdir, f"{name}.json")
    write_text_atomic(path, json.dumps(record, indent=1))
    plot_runs([record], os.path.join(workdir, f"{name}.png"), losses=[training_loss(workdir)],
              title=f"{task_name}, N = {passes}, step {step}")
    return record, path


def _recorded_step(path: str) -> int | None:
    """The ``step`` of the eval record at ``path``; None if there is none (or no readable one:
    records are written atomically, so that is a file this code never wrote whole)."""
    try:
        with open(path) as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
