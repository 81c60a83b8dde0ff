"""show: readable and JSON lines for every task, and the command line."""
import json
import os
import runpy
import subprocess
import sys

import pytest

from sleep_jax.tasks.show import render

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_json_records():
    rule110 = [json.loads(line) for line in render("rule110", 2, seed=1, as_json=True)]
    assert len(rule110) == 2
    for record in rule110:
        assert set(record) >= {"t", "states", "labels", "text"}
        assert len(record["states"]) == 4 and all(len(s) == 24 for s in record["states"])
        assert record["text"].endswith("|" + "".join(map(str, record["labels"])))
    (depo,) = [json.loads(line) for line in render("depo", 1, as_json=True)]
    assert 2 <= len(depo["edges"]) <= 75 and len(depo["queries"]) == 10
    assert set(depo["queries"][0]) == {"start", "k", "answer"}
    (gsm,) = [json.loads(line) for line in render("gsm_infinite", 1, as_json=True)]
    assert isinstance(gsm["answer"], int) and 1 <= gsm["ops"] <= 8
    assert gsm["text"].startswith(gsm["question"]) and gsm["text"].endswith(f"Answer: {gsm['answer']}<eos>")


def test_readable_lines_and_seed():
    lines = render("rule110", 1, seed=4)
    assert lines[0] == "=== rule110 example 0 (seed 4, paper-size defaults) ===" and lines[-3] == "text:"
    assert render("rule110", 1, seed=4) == lines != render("rule110", 1, seed=5)
    with pytest.raises(ValueError, match="count must be >= 0"):
        render("depo", -1)


def test_config_shows_what_that_run_trains_on():
    """--config builds the task as training does: the tiny run's 8-bit states, not the paper's 24;
    a bad override is a ConfigError naming its key."""
    from sleep_jax.tasks.show import config_task
    from sleep_jax.train.errors import ConfigError

    config = runpy.run_path(os.path.join(REPO, "configs", "rule110.py"))["get_config"]("tiny")
    (tiny,) = [json.loads(line) for line in render(config_task(config), 1, as_json=True)]
    assert [len(s) for s in tiny["states"]] == [8] * 4 and len(tiny["text"]) == 4 * 8 + 1 + 4
    lines = render(config_task(config), 1, source="configs/rule110.py:tiny")
    assert lines[0] == "=== rule110 example 0 (seed 0, configs/rule110.py:tiny) ==="
    config.task.bits = 2
    with pytest.raises(ConfigError, match=r"^task\.bits must be >= 5"):
        config_task(config)


def test_command_line():
    out = subprocess.run([sys.executable, "-m", "sleep_jax.tasks.show", "--task=depo", "--count=2", "--seed=3",
                          "--json"], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.splitlines() == render("depo", 2, seed=3, as_json=True)
