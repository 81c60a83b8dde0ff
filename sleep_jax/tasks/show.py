"""Print examples of a task, for people or as JSON lines.

    python -m sleep_jax.tasks.show --task=rule110 --count=3 [--seed=0] [--json]

Examples are indices 0..count-1 of the training split of the task's paper-size default config.
With --json, one object per line: the task's record (rule110 `t`, `states`, `labels`; depo
`edges`, `queries`; gsm_infinite `ops`, `question`, `answer`) plus the decoded `text`.
"""
from __future__ import annotations

import json

from absl import flags

from sleep_jax import cli
from sleep_jax.tasks.registry import TASK_NAMES, default_config, make


def render(task_name: str, count: int, seed: int = 0, as_json: bool = False) -> list[str]:
    """The lines `show` prints for `count` training examples of `task_name`."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    task = make(default_config(task_name))
    lines = []
    for index in range(count):
        record = task.describe("train", seed, index)
        if as_json:
            lines.append(json.dumps(record))
            continue
        lines.append(f"=== {task_name} example {index} (seed {seed}) ===")
        lines += [f"{key}: {json.dumps(value)}" for key, value in record.items() if key != "text"]
        lines += ["text:", record["text"], ""]
    return lines


def _define_flags() -> None:
    flags.DEFINE_enum("task", None, list(TASK_NAMES), "Task to show.", required=True)
    flags.DEFINE_integer("count", 1, "Number of examples.", lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Data seed.", lower_bound=0)
    flags.DEFINE_bool("json", False, "One JSON object per line instead of readable text.")


def main(argv: list[str]) -> None:
    del argv  # cli.run: none left
    flag_values = flags.FLAGS
    print("\n".join(render(flag_values.task, flag_values.count, flag_values.seed, flag_values.json)))


if __name__ == "__main__":
    cli.run(main, _define_flags)
