r"""Runs a multi-process JAX job on this machine: what ``launch/local.sh`` runs (standard library
only, so any python3 can run it).

    launch/local.sh --processes=2 --devices_per_process=4 -- \
        python -m sleep_jax.main --config=configs/rule110.py:tiny --workdir=runs/r110_2proc

Starts ``--processes`` copies of the command through ``launch/process.sh`` (the per-process entry
point the TPU pod and SLURM scripts share), each with:

- ``JAX_COORDINATOR_ADDRESS=127.0.0.1:<a free port>``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``
  (read by ``sleep_jax.parallel.initialize_multihost``; the coordinator runs in process 0);
- ``JAX_PLATFORMS=cpu`` and ``--devices_per_process`` simulated CPU devices
  (``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``, with a collective timeout long
  enough for one process to compile while another waits); collectives go through gloo.

Every output line is shown prefixed with ``[<process id>]``. SIGINT, SIGTERM or SIGHUP to the
launcher sends SIGTERM to all processes (the main job takes it as a preemption: it saves a
checkpoint and exits; whatever still runs after ``SIGNAL_GRACE_S``, or after a second signal, is
killed); if the launcher itself is killed
(even by SIGKILL) the kernel kills them too (``PR_SET_PDEATHSIG``). When a process fails the others are stopped, its last lines are
printed again, and the launcher exits with its status (128 + signal number if it was killed).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

PROCESS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "process.sh")
TAIL_LINES = 40  # lines of a failed process shown again at the end
# How long a process waits in a collective for the others. The processes reach their first
# collective far apart when one compiles the train step and another loads it from JAX's
# compilation cache (only process 0 writes it); XLA's default (30 s) then fails that run.
COLLECTIVE_TIMEOUT_S = 1200
# Seconds from SIGTERM to SIGKILL: after a forwarded signal, time for the main job to save a
# checkpoint at the step all processes agree on (JAX's preemption sync); after a failure, the
# others cannot go on without the failed one.
SIGNAL_GRACE_S = 120.0
FAILURE_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environment(base: dict[str, str], *, process_id: int, processes: int,
                        devices_per_process: int, coordinator: str) -> dict[str, str]:
    """``base`` plus the variables of process ``process_id`` of a local run."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", base.get("XLA_FLAGS", ""))
    return {**base,
            "JAX_COORDINATOR_ADDRESS": coordinator,
            "JAX_NUM_PROCESSES": str(processes),
            "JAX_PROCESS_ID": str(process_id),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"{flags.strip()} --xla_force_host_platform_device_count="
                         f"{devices_per_process} --xla_cpu_collective_timeout_seconds="
                         f"{COLLECTIVE_TIMEOUT_S}".strip()}


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGKILL when the launcher dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class _Process:
    """One child: its Popen, and a thread echoing its output (prefixed) and keeping the tail."""

    def __init__(self, process_id: int, command: list[str], env: dict[str, str]):
        self.process_id = process_id
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.popen = subprocess.Popen([PROCESS_SCRIPT, *command], env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      errors="replace", bufsize=1, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        self.echo = threading.Thread(target=self._echo, daemon=True)
        self.echo.start()

    def _echo(self) -> None:
        for line in self.popen.stdout:
            self.tail.append(line)
            sys.stdout.write(f"[{self.process_id}] {line}")
            sys.stdout.flush()

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signum)  # the process and anything it started
            except ProcessLookupError:
                pass


def run(command: list[str], *, processes: int, devices_per_process: int) -> int:
    """Runs ``processes`` copies of ``command``; returns the exit status for the launcher."""
    coordinator = f"127.0.0.1:{free_port()}"
    children: list[_Process] = []
    received: list[int] = []

    # The handler only records the signal; the loop below forwards it. A signal can arrive while
    # a child is between fork and exec, not yet in ``children`` and not yet leader of its own
    # process group: forwarded from the handler it would miss that child.
    for signum in _FORWARDED:
        signal.signal(signum, lambda signum, frame: received.append(signum))
    for process_id in range(processes):
        if received:
            break
        env = process_environment(dict(os.environ), process_id=process_id, processes=processes,
                                  devices_per_process=devices_per_process, coordinator=coordinator)
        children.append(_Process(process_id, command, env))

    failed: _Process | None = None
    forwarded = 0  # signals forwarded: the first asks every process to stop, a second kills them
    stop_deadline = None
    while [child.popen.poll() for child in children].count(None):  # polls every child
        if len(received) > forwarded:
            forwarded = len(received)
            for child in children:
                child.signal(signal.SIGTERM if forwarded == 1 else signal.SIGKILL)
        if failed is None and not received:
            failed = next((c for c in children if c.popen.returncode not in (None, 0)), None)
            if failed is not None:  # stop the others: they would wait for it forever
                for child in children:
                    child.signal(signal.SIGTERM)
        if (failed is not None or received) and stop_deadline is None:
            stop_deadline = time.monotonic() + (SIGNAL_GRACE_S if received else FAILURE_GRACE_S)
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            for child in children:
                child.signal(signal.SIGKILL)
        time.sleep(0.05)
    for child in children:
        child.echo.join(timeout=5)

    if received:
        return 128 + received[0]
    if failed is None:
        failed = next((c for c in children if c.popen.returncode != 0), None)
    if failed is None:
        return 0
    status = _exit_status(failed.popen.returncode)
    sys.stderr.write(f"launch/local.sh: process {failed.process_id} of {processes} failed with exit "
                     f"status {status}; its last lines:\n")
    sys.stderr.write("".join(f"  [{failed.process_id}] {line}" for line in failed.tail))
    sys.stderr.flush()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="launch/local.sh", description="Runs a multi-process JAX job on this machine.",
        usage="launch/local.sh --processes=P --devices_per_process=D -- COMMAND [ARGS...]")
    parser.add_argument("--processes", type=int, required=True, help="JAX processes to start")
    parser.add_argument("--devices_per_process", type=int, required=True,
                        help="simulated CPU devices in each process")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: put it after --")
    if args.processes < 1:
        parser.error(f"--processes={args.processes}: must be >= 1")
    if args.devices_per_process < 1:
        parser.error(f"--devices_per_process={args.devices_per_process}: must be >= 1")
    return run(command, processes=args.processes, devices_per_process=args.devices_per_process)


if __name__ == "__main__":
    sys.exit(main())
