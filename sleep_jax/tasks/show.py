"""Print examples of a task, for people or as JSON lines.

    python -m sleep_jax.tasks.show --config=configs/rule110.py:tiny [--config.task.bits=12] [--count=3]
    python -m sleep_jax.tasks.show --task=rule110 --count=3 [--seed=0] [--json]

Examples are indices 0..count-1 of the training split of the task a training config builds
(``--config``: what that run trains on, e.g. the tiny run's 8-bit states), or of the task's
paper-size defaults (``--task``). With --json, one object per line: the task's record (rule110 `t`, `states`, `labels`; depo
`edges`, `queries`; gsm_infinite `ops`, `question`, `answer`) plus the decoded `text`.
"""
from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from sleep_jax import cli
from sleep_jax.tasks.registry import TASK_NAMES, default_config, make
from sleep_jax.tasks.task import Task

PAPER_DEFAULTS = "paper-size defaults"


def config_task(config) -> Task:
    """The task a training config (``configs/<task>.py:<variant>`` with overrides) trains on,
    built as ``sleep_jax.main`` builds it; ``ConfigError`` naming the key at fault."""
    from sleep_jax.train import config as config_lib
    from sleep_jax.train import stages as stages_lib

    return config_lib.make_task(stages_lib.resolve(config))


def render(task: str | Task, count: int, seed: int = 0, as_json: bool = False,
           source: str = PAPER_DEFAULTS) -> list[str]:
    """The lines `show` prints for `count` training examples of `task`: a task name (its
    paper-size defaults) or a built task, whose origin `source` names (e.g. the config file)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if isinstance(task, str):
        task = make(default_config(task))
    lines = []
    for index in range(count):
        record = task.describe("train", seed, index)
        if as_json:
            lines.append(json.dumps(record))
            continue
        lines.append(f"=== {task.name} example {index} (seed {seed}, {source}) ===")
        lines += [f"{key}: {json.dumps(value)}" for key, value in record.items() if key != "text"]
        lines += ["text:", record["text"], ""]
    return lines


def _define_flags() -> None:
    flags.DEFINE_enum("task", None, list(TASK_NAMES), "Task to show, at its paper-size defaults.")
    config_flags.DEFINE_config_file("config", None, "A training config, configs/<task>.py:<variant>: "
                                    "show the task as that run trains on it.")
    flags.DEFINE_integer("count", 1, "Number of examples.", lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Data seed.", lower_bound=0)
    flags.DEFINE_bool("json", False, "One JSON object per line instead of readable text.")


def main(argv: list[str]) -> None:
    del argv  # cli.run: none left
    flag_values = flags.FLAGS
    if (flag_values.task is None) == (flag_values.config is None):
        raise app.UsageError("give exactly one of --task (paper-size defaults) and --config "
                             "(configs/<task>.py:<variant>, what that run trains on)")
    task, source = flag_values.task, PAPER_DEFAULTS
    if flag_values.config is not None:
        from sleep_jax.train.errors import ConfigError
        try:
            task, source = config_task(flag_values.config), flag_values["config"].config_filename
        except ConfigError as error:
            raise app.UsageError(f"--config: {error}") from None
    print("\n".join(render(task, flag_values.count, flag_values.seed, flag_values.json, source)))


if __name__ == "__main__":
    cli.run(main, _define_flags)
