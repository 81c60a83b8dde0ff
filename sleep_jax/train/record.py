"""The run's record, ``<workdir>/config.json``, resuming against it, and the run lock.

The run directory keeps the run's record, ``<workdir>/config.json`` (``write_run_config``,
``load_run_config``); ``check_resume`` compares a resumed run's config with it,
``check_resume_steps`` its ``train.steps`` with the newest checkpoint, and ``eval_tag`` names an
eval whose settings differ from it. ``lock_run`` makes a workdir hold one run at a time.
"""
from __future__ import annotations

import errno
import json
import os
from typing import IO, Any

import ml_collections
from absl import logging

from sleep_jax.files import LockHeld, hold_lock, write_text_atomic
from sleep_jax.flat import differences
from sleep_jax.train.config import INIT_DEFAULTS, STAGE_KEYS, TRAIN_DEFAULTS, _defaults
from sleep_jax.train.errors import ConfigError, RunStopped

# Keys a resumed run may change: they touch neither the model, the task, the sleep nor the
# optimiser state (``train.steps`` moves the end of the LR schedule; that is what extending a run
# means; ``train.grad_accum_steps`` and the mesh change only how a step is laid out). Every other
# key must equal the run's config.json.
RESUMABLE_KEYS = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                  "train.keep_checkpoints", "train.eval_batch_size", "train.grad_accum_steps",
                  "mesh.data", "mesh.fsdp", "mesh.tensor")

RUN_CONFIG = "config.json"
# The run lock's file. The lock is an flock on it, not the file itself: the file stays after a
# run (holding the last holder's pid) and is never a stale lock.
RUN_LOCK = "run.lock"
# Keys added with a default that differs from what runs recorded before them did: the value a
# record without the key stands for (the conv tail crossed windows before sleep.carry_conv_tail).
BEFORE_THE_KEY = {"sleep": {"carry_conv_tail": True}}


def write_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes ``<workdir>/config.json`` atomically (a crash leaves the old one whole)."""
    write_text_atomic(os.path.join(workdir, RUN_CONFIG), config.to_json_best_effort(indent=1, sort_keys=True))


def load_run_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The run's ``config.json`` (lists back to tuples), or None if the run has none yet."""
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            tree = json.load(f)
    except ValueError as error:
        raise ConfigError(f"{path}: not a readable config ({error})") from None

    def typed(value):
        if isinstance(value, list):
            return tuple(typed(v) for v in value)
        return value

    record = {block: {key: typed(value) for key, value in keys.items()} for block, keys in tree.items()}
    # A record written before a key existed: the run ran with that key's default, or with the
    # behaviour the code had before the key (BEFORE_THE_KEY).
    for block, defaults in _record_defaults().items():
        record[block] = {**defaults, **record.get(block, {})}
    return ml_collections.ConfigDict(record)


def _record_defaults() -> dict[str, dict[str, Any]]:
    """{block: {key: default}} of the blocks whose keys have defaults (not ``task``: its defaults
    depend on the task and size)."""
    from sleep_jax.model import ModelConfig
    from sleep_jax.sleep import SleepConfig

    return {"model": _defaults(ModelConfig), "sleep": {**_defaults(SleepConfig), **BEFORE_THE_KEY["sleep"]},
            "train": dict(TRAIN_DEFAULTS), "init": dict(INIT_DEFAULTS), "stages": {key: () for key in STAGE_KEYS}}


def with_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``{"block.key": value}`` set (a new key is kept, so that
    ``validate`` names it)."""
    out = ml_collections.ConfigDict(config.to_dict())
    for path, value in overrides.items():
        block, _, key = path.partition(".")
        if block not in out:
            out[block] = ml_collections.ConfigDict()
        out[block][key] = value
    return out


def check_resume(stored: ml_collections.ConfigDict, given: ml_collections.ConfigDict,
                 path: str) -> None:
    """Raises ``ConfigError`` naming the first key outside ``RESUMABLE_KEYS`` whose value differs
    from the run's record ``path`` (its config.json), with both values."""
    for key, (old, new) in differences(stored, given).items():
        if key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"{key}={new!r}: the run in {os.path.dirname(path)} was trained with {key}={old!r} "
                f"({path}); a resumed run may change only {', '.join(RESUMABLE_KEYS)}; use a new "
                f"--workdir for a different run")


# Keys that do not change what an eval computes: training-only settings and the mesh.
def _changes_eval(key: str) -> bool:
    if key.startswith("mesh."):
        return False
    if key.startswith("train."):
        return key == "train.eval_seed"
    return True


def eval_tag(stored: ml_collections.ConfigDict | None, given: ml_collections.ConfigDict) -> str | None:
    """``"sleep.passes=2"`` (``,``-joined) naming the eval settings that differ from the run's
    record, or None when the eval is the run's own (then it writes eval.json)."""
    if stored is None:
        return None
    changed = [f"{key}={new}".replace(" ", "").replace("/", "_")
               for key, (_, new) in differences(stored, given).items() if _changes_eval(key)]
    return ",".join(changed) or None


def lock_run(workdir: str) -> IO[str] | None:
    """Takes ``<workdir>/run.lock`` for this process (the workdir is created if missing) and
    returns the open file: keep it open while the run writes the workdir; the kernel releases
    the lock when the process ends, however it ends. Raises ``RunStopped`` naming the holder's
    pid if another process holds it. On a filesystem that refuses ``flock`` it warns and
    returns None: concurrent runs there are not detected."""
    path = os.path.join(workdir, RUN_LOCK)
    try:
        return hold_lock(path)
    except LockHeld as held:
        holder = f"process {held.pid}" if held.pid is not None else "another process"
        raise RunStopped(f"--workdir={workdir} is in use by {holder} (lock {path}); a workdir "
                         f"holds one run at a time: wait for it to end or use another "
                         f"--workdir") from None
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        logging.warning("%s: cannot lock (%s); another run on this workdir would not be "
                        "detected", path, os.strerror(error.errno))
        return None


def check_resume_steps(steps: int, latest_step: int, checkpoint: str) -> None:
    """Raises ``ConfigError`` if a resumed run's ``train.steps`` (``steps``, the stages' total)
    is below its newest checkpoint's step (``checkpoint`` its path): it would train nothing and
    label that checkpoint's weights with a smaller step."""
    if steps < latest_step:
        raise ConfigError(f"train.steps={steps}: the run is already at step {latest_step} "
                          f"({checkpoint}); a resumed run's train.steps must be >= "
                          f"{latest_step}; --mode=eval evaluates that checkpoint as it is")
