"""Run integrity: a workdir holds one run at a time (the run lock, released however its holder
ends), a resume never runs below its newest checkpoint, an eval never replaces a later one."""
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys

import jax
import pytest

from sleep_jax.train import loop
from sleep_jax.train import record as record_lib
from sleep_jax.train.checkpoint import Checkpointer
from sleep_jax.train.errors import ConfigError, RunStopped
from sleep_jax.train.evaluation import write_eval
from tests.train.test_config import rule110_tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A process holding a workdir's run lock until killed (sleep_jax.files imports no JAX: fast).
HOLDER = ("import sys, time; from sleep_jax.files import hold_lock; "
          "lock = hold_lock(sys.argv[1]); print('held', flush=True); time.sleep(600)")


def test_a_held_workdir_is_refused_naming_the_holder_until_it_is_killed(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, os.path.join(workdir, record_lib.RUN_LOCK)], cwd=REPO,
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunStopped) as info:
            record_lib.lock_run(workdir)
        assert str(info.value).startswith(
            f"--workdir={workdir} is in use by process {holder.pid} "
            f"(lock {os.path.join(workdir, record_lib.RUN_LOCK)}); a workdir holds one run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = record_lib.lock_run(workdir)  # kill -9 left no stale lock
    with open(os.path.join(workdir, record_lib.RUN_LOCK)) as f:
        assert f.read() == f"{os.getpid()}\n"
    lock.close()


def test_a_filesystem_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    def no_locks(fd, operation):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING"):
        assert record_lib.lock_run(str(tmp_path)) is None
    assert "cannot lock" in caplog.text and "would not be detected" in caplog.text


def test_a_resume_with_fewer_steps_than_its_newest_checkpoint_is_refused(tmp_path):
    workdir = str(tmp_path)
    config = rule110_tiny()
    config.train.update(steps=10, warmup_steps=5)
    record_lib.write_run_config(workdir, config)
    record_before = (tmp_path / record_lib.RUN_CONFIG).read_text()
    saved = Checkpointer(workdir)  # a checkpoint at step 33 (its contents are never read)
    saved.save(33, {"step": jax.numpy.int32(33)}, None, force=True)
    saved.close()
    with pytest.raises(ConfigError) as info:
        loop.train(config, workdir)
    assert str(info.value).startswith(
        f"train.steps=10: the run is already at step 33 ({workdir}/checkpoints/33); a resumed "
        "run's train.steps must be >= 33")
    assert (tmp_path / record_lib.RUN_CONFIG).read_text() == record_before
    record_lib.check_resume_steps(33, 33, "run/checkpoints/33")  # equal: evaluates step 33


RESULT = {"accuracy": 0.5, "by_difficulty": {"t=0": 0.5}, "examples": 8}


def _write(workdir, step, newest_step=None, name="eval"):
    return write_eval(workdir, RESULT, task_name="rule110", passes=1, step=step, name=name,
                      newest_step=newest_step)[1]


def test_an_eval_of_an_older_step_never_replaces_a_later_one(tmp_path):
    workdir = str(tmp_path)
    assert _write(workdir, 40) == f"{workdir}/eval.json"
    # a checkpoint fallback (newest 40 unreadable, 36 evaluated) writes its own file
    assert _write(workdir, 36, newest_step=40) == f"{workdir}/eval@step36.json"
    assert _write(workdir, 36, newest_step=40, name="eval-sleep.passes=2") == \
        f"{workdir}/eval-sleep.passes=2@step36.json"
    # the newest checkpoint, older than the step eval.json holds (40 set aside since)
    assert _write(workdir, 38, newest_step=38) == f"{workdir}/eval@step38.json"
    assert os.path.exists(f"{workdir}/eval@step38.png")
    with open(f"{workdir}/eval.json") as f:
        assert json.load(f)["step"] == 40
    assert _write(workdir, 44, newest_step=44) == f"{workdir}/eval.json"  # a later one replaces
    with open(f"{workdir}/eval.json") as f:
        assert json.load(f)["step"] == 44
