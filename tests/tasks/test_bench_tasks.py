"""sleep_jax.bench.tasks: one measurement per task (belongs in tests/bench/test_tasks.py once that
folder exists; kept here because tests/tasks is the tasks area's)."""
from sleep_jax.bench.tasks import TARGET_PER_S, measure
from sleep_jax.tasks import TASK_NAMES


def test_measure_reports_throughput_for_every_task():
    assert set(TARGET_PER_S) == set(TASK_NAMES)
    for name in TASK_NAMES:
        result = measure(name, examples=8, batch_size=4, size="tiny")
        assert result["task"] == name and result["examples"] == 8 and result["examples_per_s"] > 0
