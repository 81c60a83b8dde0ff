"""Task names -> task classes and their default configs; `make` builds a task from a config block."""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from sleep_jax.tasks import config as config_lib
from sleep_jax.tasks import depo, gsm_infinite, rule110
from sleep_jax.tasks.task import Task

# name -> (task class, paper-size defaults, overrides of the small CPU-sized variant)
_TASKS = {
    "rule110": (rule110.Rule110Task, rule110.DEFAULTS, rule110.TINY),
    "depo": (depo.DepoTask, depo.DEFAULTS, depo.TINY),
    "gsm_infinite": (gsm_infinite.GsmInfiniteTask, gsm_infinite.DEFAULTS, gsm_infinite.TINY),
}
TASK_NAMES = tuple(_TASKS)
SIZES = ("paper", "tiny")


def _entry(name: Any):
    if name not in _TASKS:
        raise ValueError(f"task.name must be one of {TASK_NAMES}, got {name!r}")
    return _TASKS[name]


def default_config(name: str, size: str = "paper") -> ml_collections.ConfigDict:
    """Every key of task `name` with its default: `size="paper"` (the paper's scale) or `"tiny"`
    (short sequences that train on a CPU)."""
    _, defaults, tiny = _entry(name)
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    values = {**defaults, **(tiny if size == "tiny" else {})}
    return ml_collections.ConfigDict({"name": name, **values})


def make(task_config: Mapping[str, Any] | ml_collections.ConfigDict) -> Task:
    """The task a config block describes (`name` plus task keys; missing keys take the paper
    defaults). ValueError naming the key on an unknown key or a bad value."""
    values = config_lib.to_dict(task_config)
    if "name" not in values:
        raise ValueError(f"task.name is missing; one of {TASK_NAMES}")
    task_class, _, _ = _entry(values.pop("name"))
    task = task_class(values)
    task.check_layout()
    return task
