"""The main job (subprocesses): exact resume after SIGKILL; the run's config.json decides what a
resume or an eval may change; divergence stops the run; config errors are one line."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from absl import flags
from ml_collections import config_flags

from sleep_jax.train import config as config_lib
from sleep_jax.train.errors import ConfigError
from sleep_jax.train.metrics import read_metrics
from sleep_jax.train.record import lock_run

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
    # one CPU device (the sharded step has its own test); conftest's compile flags kept
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
    env["JAX_PLATFORMS"] = "cpu"
    # Later runs reuse the first one's compiled steps (compiling is most of a tiny run's time).
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _start(workdir, *extra, config=SMALL):
    cache_dir = os.path.join(os.path.dirname(workdir), "jax_cache")
    return subprocess.Popen([sys.executable, "-m", "sleep_jax.main", f"--workdir={workdir}", *config,
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


def _fails(process, timeout=300):
    """The last line of a run that must stop with status 1 and no traceback."""
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return out.strip().splitlines()[-1]


def _read(path):
    with open(path) as f:
        return f.read()


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
    assert set(record["by_difficulty"]) == {"t=0"}  # eval_steps default to the trained t
    assert os.path.getsize(os.path.join(killed_dir, "eval.png")) > 0

    # A resume that would change the sleep stops, naming the key and both values, and leaves the
    # run's record as it was.
    record_before = _read(os.path.join(killed_dir, "config.json"))
    last = _fails(_start(killed_dir, "--config.sleep.passes=3"))
    assert last.startswith(f"sleep.passes=3: the run in {killed_dir} was trained with "
                           "sleep.passes=1"), last
    assert _read(os.path.join(killed_dir, "config.json")) == record_before

    # --mode=eval reads the run's config.json (no --config) and scores the latest checkpoint
    # again: the same numbers.
    os.remove(os.path.join(killed_dir, "eval.json"))
    _wait(_start(killed_dir, "--mode=eval", config=[]))
    with open(os.path.join(killed_dir, "eval.json")) as f:
        assert json.load(f) == record
    # An eval with other settings writes beside the run's own eval.json, never over it.
    _wait(_start(killed_dir, "--mode=eval", "--config.sleep.passes=2",
                 config=["--config=configs/rule110.py:tiny"]))
    with open(os.path.join(killed_dir, "eval-sleep.passes=2.json")) as f:
        assert json.load(f)["passes"] == 2
    with open(os.path.join(killed_dir, "eval.json")) as f:
        assert json.load(f) == record


def test_a_workdir_held_by_another_process_is_refused_naming_its_pid(tmp_path):
    workdir = str(tmp_path / "run")
    lock = lock_run(workdir)  # this test's process holds the run (tests/train/test_record.py: kill -9)
    try:
        start = time.perf_counter()
        last = _fails(_start(workdir), timeout=60)
        seconds = time.perf_counter() - start
    finally:
        lock.close()
    assert last == (f"run stopped: --workdir={workdir} is in use by process {os.getpid()} "
                    f"(lock {workdir}/run.lock); a workdir holds one run at a time: wait for it "
                    "to end or use another --workdir")
    assert seconds < 30, seconds  # refused before anything is built (~4 s: imports)
    assert os.listdir(workdir) == ["run.lock"]


def test_divergence_stops_the_run_before_saving_or_evaluating_it(tmp_path):
    workdir = str(tmp_path / "diverged")
    last = _fails(_start(workdir, "--config.train.muon_lr=1e6", "--config.train.adamw_lr=1e6",
                         "--config.train.grad_clip=0", "--config.train.steps=8",
                         "--config.train.checkpoint_every=2"))
    match = re.fullmatch(r"run stopped: step (\d+): the loss or gradient is not finite .*; "
                         r"last good checkpoint: (.*) \(step (\d+)\); .*", last)
    assert match, last
    bad, good = int(match[1]), int(match[3])
    assert match[2] == os.path.join(workdir, "checkpoints", str(good))
    assert _finished_checkpoints(workdir)[-1] == good < bad  # nothing after the last good step
    assert not os.path.exists(os.path.join(workdir, "eval.json"))


@pytest.mark.parametrize("override, message", [
    ("--config.sleep.foo=2", "sleep.foo: unknown key; the sleep block takes"),
    ("--config.train.seed=-1", "train.seed=-1: must be an int >= 0"),
])
def test_config_errors_are_one_line_naming_the_key(tmp_path, override, message):
    workdir = str(tmp_path / "run")
    process = _start(workdir, override)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 1, out[-3000:]
    assert len(out.strip().splitlines()) == 1 and out.startswith(message), out[-3000:]  # no config dump, no usage
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def _parse(*overrides):
    """The config as sleep_jax.main parses it (unknown keys pass through to validation)."""
    argv = ["main", f"--config={REPO}/configs/rule110.py:tiny", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=False,
                                    accept_new_attributes=True, sys_argv=argv)
    values(argv)
    return values.config


def test_command_line_overrides_reach_the_config():
    config = _parse("--config.sleep.passes=3", "--config.model.loop=(0,2)",
                    "--config.model.vocab_size=10", "--config.task.steps=(1,)")
    assert (config.sleep.passes, config.model.loop, config.model.vocab_size, config.task.steps) == \
        (3, (0, 2), 10, (1,))


def test_an_unknown_override_key_is_named_by_validation():
    config = _parse("--config.train.nope=1")
    with pytest.raises(ConfigError, match=r"^train\.nope: unknown key"):
        config_lib.check_structure(config)
