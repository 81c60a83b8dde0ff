"""launch/local.sh: real multi-process runs (jax.distributed, gloo) of the tiny Rule 110 job.

- 2 processes x 4 devices train like 1 process x 8 (same global batch, same 8-device mesh);
- both processes killed (SIGKILL to the launcher) after a checkpoint, relaunched, preempted
  (SIGTERM), relaunched: the same losses as an uninterrupted run, bit for bit;
- a checkpoint of 2 processes restores in 1 process (arrays resharded, data position kept);
- a failing process fails the launcher with its error shown; signals reach every process.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sleep_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(REPO, "launch", "local.sh")
STEPS = 20
# The tiny Rule 110 job at N = 2, shrunk: 20 steps of batch 8, a checkpoint every 4.
JOB = [
    "--config=configs/rule110.py:tiny", "--config.sleep.passes=2",
    "--config.model.pattern=AG", "--config.model.d_model=16", "--config.model.attn_head_dim=8",
    "--config.model.gdn_head_dim=8", "--config.model.gdn_v_head_dim=8", "--config.model.mlp_hidden=32",
    f"--config.train.steps={STEPS}", "--config.train.batch_size=8", "--config.train.warmup_steps=4",
    "--config.train.log_every=1", "--config.train.checkpoint_every=4",
    "--config.train.eval_batch_size=8", "--config.task.eval_examples=8",
]


def _env(cache_dir, **extra):
    env = dict(os.environ, PYTHON=sys.executable)
    # the launcher (or the test) sets the device count; conftest's compile flags kept
    env["XLA_FLAGS"] = " ".join(re.sub(r"--xla_force_host_platform_device_count=\S*", "",
                                       env.get("XLA_FLAGS", "")).split() + extra.pop("XLA_FLAGS", "").split())
    env.update(extra)
    # A relaunch reuses the first launch's compiled steps.
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _start(argv, env, log_path):
    """Starts ``argv`` with its output in ``log_path`` (a file: no pipe to fill while the test
    waits on something else); ``_output(process)`` reads it."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = log_path
    return process


def _output(process):
    with open(process.log_path) as f:
        return f.read()


def _launch(command, env, processes, devices_per_process, log_path):
    return _start([LAUNCHER, f"--processes={processes}",
                   f"--devices_per_process={devices_per_process}", "--", *command], env, log_path)


def _main_job(workdir):
    return [sys.executable, "-m", "sleep_jax.main", f"--workdir={workdir}", *JOB]


def _wait(process, timeout=600):
    process.wait(timeout=timeout)
    out = _output(process)
    assert process.returncode == 0, out[-4000:]
    return out


def _losses(workdir):
    return {step: m["loss"] for step, m in read_metrics(workdir).items()}


def _finished_checkpoints(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def _logged_lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return sum(1 for _ in f)


def _running_with(text, launcher=None):
    """Pids of processes whose command line contains ``text``, the launcher's own left out."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if launcher is not None and int(pid) == launcher.pid:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted runs of the job: 1 process x 8 devices and 2 processes x 4 devices."""
    root = tmp_path_factory.mktemp("launch")
    one, two = str(root / "one"), str(root / "two")
    single = _start(_main_job(one), _env(str(root / "cache_one"),
                                         XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                    str(root / "one.log"))
    double = _launch(_main_job(two), _env(str(root / "cache_two")), 2, 4, str(root / "two.log"))
    _wait(single)
    out = _wait(double)
    return {"root": root, "one": one, "two": two, "two_output": out}


def test_two_processes_train_like_one(runs):
    one, two = _losses(runs["one"]), _losses(runs["two"])
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    rel = {step: abs(two[step] - one[step]) / abs(one[step]) for step in one}
    assert max(rel.values()) <= 1e-5, rel
    assert "process 1 of 2, 4 local / 8 global devices" in runs["two_output"]
    # Each process saved its own data iterator position; process 0 alone wrote eval.json.
    data = os.path.join(runs["two"], "checkpoints", str(STEPS), "data")
    assert sorted(n for n in os.listdir(data) if n.endswith(".json")) == \
        ["process_0-of-2.json", "process_1-of-2.json"]
    with open(os.path.join(runs["two"], "eval.json")) as f:
        assert json.load(f)["step"] == STEPS


def _wait_for(condition, process, what, timeout=300):
    deadline = time.time() + timeout
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    if not condition():
        out = _output(process)
        raise AssertionError(f"{what} did not happen; launcher status {process.returncode}:\n"
                             f"{out[-4000:]}")


def test_killed_then_preempted_processes_resume_with_identical_losses(runs):
    """SIGKILL to the launcher after the first checkpoint (both processes die with it), relaunch,
    SIGTERM to the launcher (a preemption: both processes save at one step and exit), relaunch:
    every step's loss is that of the uninterrupted 2-process run, bit for bit."""
    workdir = str(runs["root"] / "killed")
    env = _env(str(runs["root"] / "cache_two"))
    log = str(runs["root"] / "killed_{}.log")
    launcher = _launch(_main_job(workdir), env, 2, 4, log.format(1))
    _wait_for(lambda: _finished_checkpoints(workdir), launcher, "a checkpoint")
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=60)
    assert launcher.returncode == -signal.SIGKILL, _output(launcher)[-4000:]
    deadline = time.time() + 30  # the kernel kills both processes with the launcher
    while _running_with(workdir) and time.time() < deadline:
        time.sleep(0.1)
    assert not _running_with(workdir)
    killed_at = max(_finished_checkpoints(workdir))
    assert killed_at < STEPS, "the run finished before it could be killed"

    logged = _logged_lines(workdir)
    launcher = _launch(_main_job(workdir), env, 2, 4, log.format(2))
    _wait_for(lambda: _logged_lines(workdir) >= logged + 2, launcher, "2 steps after the resume")
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=300)
    out = _output(launcher)
    assert f"resuming from {os.path.join(workdir, 'checkpoints')}/{killed_at}" in out
    assert launcher.returncode == 128 + signal.SIGTERM, out[-4000:]
    preempted_at = max(_finished_checkpoints(workdir))
    assert f"preempted: saved step {preempted_at}" in out, out[-4000:]
    assert killed_at < preempted_at < STEPS, "the run finished before it could be preempted"

    out = _wait(_launch(_main_job(workdir), env, 2, 4, log.format(3)))
    assert f"resuming from {os.path.join(workdir, 'checkpoints')}/{preempted_at}" in out
    assert _losses(workdir) == _losses(runs["two"])  # bit-identical at every step


def _config(*overrides):
    from absl import flags
    from ml_collections import config_flags

    argv = ["main", *[a.replace("configs/", f"{REPO}/configs/") for a in JOB], *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def _restore(workdir, config):
    import jax

    from sleep_jax.train.checkpoint import Checkpointer, abstract_with_shardings
    from sleep_jax.train.data import train_iterator
    from sleep_jax.train.loop import setup
    from sleep_jax.train.step import abstract_train_state

    exp = setup(config)
    checkpointer = Checkpointer(workdir)
    data = train_iterator(exp.task, batch_size=config.train.batch_size, seed=config.train.seed)
    abstract, shardings = abstract_train_state(exp.create_params, exp.optimizer, exp.mesh)
    try:
        state = checkpointer.restore(abstract_with_shardings(abstract, shardings), data)
    finally:
        checkpointer.close()
    return int(jax.device_get(state["step"])), next(data), exp.task


def test_checkpoint_of_two_processes_restores_in_one(runs, tmp_path):
    """This test process is 1 process with 8 devices; the checkpoint was written by 2 x 4."""
    import numpy as np

    workdir = str(tmp_path / "copy")
    shutil.copytree(runs["two"], workdir)
    config = _config()
    step, batch, task = _restore(workdir, config)
    assert step == STEPS
    # The data position carried over: the next batch is global batch 20, examples 160..167.
    first = STEPS * config.train.batch_size
    expected = np.stack([task.example("train", config.train.seed, first + i)["tokens"]
                         for i in range(config.train.batch_size)])
    np.testing.assert_array_equal(batch["tokens"], expected)

    with pytest.raises(ValueError, match=r"state.*has shape .*this run's config gives"):
        _restore(workdir, _config("--config.model.mlp_hidden=64"))
    position = os.path.join(workdir, "checkpoints", str(STEPS), "data", "process_1-of-2.json")
    with open(position, "w") as f:
        json.dump({"next_index": 3}, f)
    with pytest.raises(ValueError, match="written by 2 processes .* restores only on that many"):
        _restore(workdir, config)


def test_a_failing_process_fails_the_launcher_with_its_error(tmp_path):
    fail_in_one = ("import os, sys, time\n"
                   "if os.environ['JAX_PROCESS_ID'] == '1':\n"
                   "    sys.exit('process 1 could not read its shard')\n"
                   "time.sleep(600)\n")
    start = time.time()
    launcher = _launch([sys.executable, "-c", fail_in_one], _env(str(tmp_path)), 2, 1,
                       str(tmp_path / "launcher.log"))
    launcher.wait(timeout=120)
    out = _output(launcher)
    assert launcher.returncode == 1, out
    assert "process 1 of 2 failed with exit status 1" in out
    assert "[1] process 1 could not read its shard" in out
    assert time.time() - start < 60  # process 0 was stopped, not waited for


def test_a_signal_to_the_launcher_stops_every_process(tmp_path):
    marker = str(tmp_path / "sleeper")
    wait = f"import time; print('up', flush=True); time.sleep(600)  # {marker}"
    launcher = _launch([sys.executable, "-c", wait], _env(str(tmp_path)), 2, 1,
                       str(tmp_path / "launcher.log"))
    # Both children print once they run the command (a child between fork and exec still has the
    # launcher's command line, so /proc alone cannot tell that it started).
    _wait_for(lambda: _output(launcher).count("] up") == 2, launcher, "both processes up", 60)
    assert len(_running_with(marker, launcher)) == 2
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=60)
    assert launcher.returncode == 128 + signal.SIGTERM
    assert not _running_with(marker)


def test_a_cpu_machine_does_not_start_libtpu():
    """Without JAX_PLATFORMS: a TPU/GPU host is left to JAX; a CPU machine gets the CPU alone, and
    libtpu (installed for the TPU compile check) logs nothing."""
    probe = ("import logging; logging.basicConfig(level=logging.INFO)\n"
             "import jax\n"
             "from sleep_jax.parallel import distributed\n"
             "distributed.has_accelerator = lambda: True\n"
             "distributed.use_cpu_without_accelerator()\n"
             "print(jax.config.jax_platforms)\n"
             "distributed.has_accelerator = lambda: False\n"
             "distributed.use_cpu_without_accelerator()\n"
             "print(jax.config.jax_platforms, jax.devices()[0].platform)\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["None", "cpu cpu"]
    assert "tpu" not in result.stderr.lower(), result.stderr


def _fake_tool(directory, name):
    """An executable ``name`` in ``directory`` that writes its arguments, one per line, to
    ``<directory>/<name>.args``."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{path}.args"\n')
    os.chmod(path, 0o755)
    return path + ".args"


def _fake_path_env(directory, **extra):
    return dict(os.environ, PATH=f"{directory}:{os.environ['PATH']}", **extra)


def test_pod_and_slurm_scripts_run_the_shared_entry_point(tmp_path):
    """tpu_pod.sh and slurm_gpu.sbatch start every process through launch/process.sh, as
    local.sh does (gcloud and srun replaced by recorders)."""
    job = ["python", "-m", "sleep_jax.main", "--config=configs/rule110.py:paper",
           "--workdir=/shared/runs/r 110", "--config.sleep.passes=4"]
    gcloud = _fake_tool(str(tmp_path), "gcloud")
    subprocess.run([os.path.join(REPO, "launch", "tpu_pod.sh"), "my-v5p-64", "us-east5-a",
                    "configs/rule110.py:paper", "/shared/runs/r 110", "--config.sleep.passes=4"],
                   check=True, cwd=REPO, env=_fake_path_env(str(tmp_path)), timeout=60)
    with open(gcloud) as f:
        args = f.read().splitlines()
    assert args[:7] == ["compute", "tpus", "tpu-vm", "ssh", "my-v5p-64", "--zone=us-east5-a",
                        "--worker=all"]
    remote = args[7]
    assert remote.startswith("--command=cd ~/sleep_jax && launch/process.sh python -m sleep_jax.main ")
    # The remote shell splits the command back into the job's arguments.
    quoted = remote.split("launch/process.sh ", 1)[1].split(" 2>&1")[0]
    split = subprocess.run(["bash", "-c", f'printf "%s\\n" {quoted}'], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert split == job

    srun = _fake_tool(str(tmp_path), "srun")
    subprocess.run(["bash", os.path.join(REPO, "launch", "slurm_gpu.sbatch"),
                    "configs/rule110.py:paper", str(tmp_path / "run"), "--config.sleep.passes=4"],
                   check=True, cwd=REPO, env=_fake_path_env(str(tmp_path), SLURM_SUBMIT_DIR=REPO),
                   timeout=60)
    with open(srun) as f:
        assert f.read().splitlines() == [
            "--kill-on-bad-exit=1", "launch/process.sh", "python", "-m", "sleep_jax.main",
            "--config=configs/rule110.py:paper", f"--workdir={tmp_path / 'run'}",
            "--config.sleep.passes=4"]
