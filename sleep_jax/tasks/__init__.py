"""The paper's tasks (Rule 110, Depo, GSM-Infinite style) as deterministic grain pipelines.

    task = sleep_jax.tasks.make(sleep_jax.tasks.default_config("rule110"))
    batches = iter(task.batches("train", seed=0, batch_size=64))
    evaluator = task.evaluator()
"""
from sleep_jax.tasks.registry import SIZES, TASK_NAMES, default_config, make
from sleep_jax.tasks.task import Layout, Task

__all__ = ["SIZES", "TASK_NAMES", "Layout", "Task", "default_config", "make"]
