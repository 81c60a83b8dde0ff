"""The main job: config errors at start, and exact resume after SIGKILL (subprocesses)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from absl import flags
from ml_collections import config_flags

from sleep_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A very small Rule 110 run: 40 steps, a checkpoint every 4.
SMALL = [
    "--config=configs/rule110.py:tiny",
    "--config.model.pattern=AG", "--config.model.d_model=16", "--config.model.attn_head_dim=8", "--config.model.gdn_head_dim=8",
    "--config.model.gdn_v_head_dim=8", "--config.model.mlp_hidden=32",
    "--config.train.steps=40", "--config.train.batch_size=8", "--config.train.warmup_steps=4",
    "--config.train.log_every=1", "--config.train.checkpoint_every=4",
    "--config.train.eval_batch_size=8", "--config.task.eval_examples=8",
]


def _env(cache_dir):
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device: the sharded step has its own test
    env["JAX_PLATFORMS"] = "cpu"
    # Later runs reuse the first one's compiled steps (compiling is most of a tiny run's time).
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _start(workdir, *extra):
    cache_dir = os.path.join(os.path.dirname(workdir), "jax_cache")
    return subprocess.Popen([sys.executable, "-m", "sleep_jax.main", f"--workdir={workdir}", *SMALL,
                             *extra],
                            cwd=REPO, env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finished_checkpoints(workdir):
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _wait(process, timeout=300):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def test_killed_run_resumes_with_identical_losses(tmp_path):
    straight_dir, killed_dir = str(tmp_path / "straight"), str(tmp_path / "killed")
    _wait(_start(straight_dir))
    killed = _start(killed_dir)
    deadline = time.time() + 300
    while not _finished_checkpoints(killed_dir) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    out, _ = killed.communicate()
    assert killed.returncode == -signal.SIGKILL, out[-3000:]
    resume_step = max(_finished_checkpoints(killed_dir))
    assert resume_step < 40, "the run finished before it could be killed"
    logged_before_kill = set(read_metrics(killed_dir))
    assert resume_step in logged_before_kill

    out = _wait(_start(killed_dir))
    assert f"resuming from {os.path.join(killed_dir, 'checkpoints')}/{resume_step}" in out

    expected = {step: m["loss"] for step, m in read_metrics(straight_dir).items()}
    resumed = {step: m["loss"] for step, m in read_metrics(killed_dir).items()}
    assert sorted(expected) == list(range(1, 41))
    assert resumed == expected  # bit-identical at every step, before and after the kill
    with open(os.path.join(killed_dir, "eval.json")) as f:
        record = json.load(f)
    assert record["task"] == "rule110" and record["passes"] == 1 and record["step"] == 40
    assert set(record["by_difficulty"]) == {"t=0", "t=1", "t=2", "t=3"}
    assert os.path.getsize(os.path.join(killed_dir, "eval.png")) > 0

    # --mode=eval scores the latest checkpoint again: the same numbers.
    os.remove(os.path.join(killed_dir, "eval.json"))
    _wait(_start(killed_dir, "--mode=eval"))
    with open(os.path.join(killed_dir, "eval.json")) as f:
        assert json.load(f) == record


def _parse(*overrides):
    argv = ["main", f"--config={REPO}/configs/rule110.py:tiny", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def test_command_line_overrides_reach_the_config():
    config = _parse("--config.sleep.passes=3", "--config.model.loop=(0,2)",
                    "--config.model.vocab_size=10", "--config.task.steps=(1,)")
    assert (config.sleep.passes, config.model.loop, config.model.vocab_size, config.task.steps) == \
        (3, (0, 2), 10, (1,))


def test_config_flags_reject_an_unknown_override_key():
    with pytest.raises((KeyError, AttributeError), match="nope"):
        _parse("--config.train.nope=1")
