"""Multi-process start: one JAX process per host (TPU pod worker, SLURM task), or several on one
machine (``launch/local.sh``), the choice of platform on a machine without an accelerator, and
how a CPU-only process keeps its freed host memory.

Environment read here (set by ``launch/``; all optional):

- ``JAX_COORDINATOR_ADDRESS`` (``host:port``), ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``: the
  coordinator and this process's place. Unset, JAX discovers them (Cloud TPU metadata on a pod,
  ``SLURM_*`` variables under ``srun``).
- ``SLEEP_JAX_MULTIHOST=1``: makes ``--multihost`` the main job's default (``launch/process.sh``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

import jax
from absl import logging

# Devices whose presence means an accelerator runtime may be wanted: Google's PCI vendor id (TPU
# chips; what JAX's own TPU detection reads) and the NVIDIA device nodes JAX checks for CUDA.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_NVIDIA_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")


def has_accelerator() -> bool:
    """True if this machine has a TPU chip on its PCI bus or an NVIDIA GPU device node."""
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return any(os.path.exists(node) for node in _NVIDIA_DEVICE_NODES)


def use_cpu_without_accelerator() -> None:
    """On a machine with no TPU chip and no NVIDIA GPU, runs JAX on the CPU without trying libtpu.

    With libtpu installed (the ``tpu`` extra: the TPU compile-only check needs it), JAX otherwise
    tries to start a TPU runtime on every machine, and logs its failure: ``unexpected worker
    hostname``, or, while another JAX process holds it, advice to delete libtpu's lock file. An
    explicit ``JAX_PLATFORMS`` (or ``jax_platforms``) is left alone; so are TPU and GPU hosts.
    Must run before JAX starts its backends (the first device query).
    """
    if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or has_accelerator():
        return
    jax.config.update("jax_platforms", "cpu")


def runs_on_cpu() -> bool:
    """True if JAX is set to run on the CPU only: ``JAX_PLATFORMS`` or ``jax_platforms`` is
    ``cpu`` (after `use_cpu_without_accelerator`, on every machine without an accelerator)."""
    return (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms) == "cpu"


# glibc's mallopt options (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_host_memory() -> bool:
    """With glibc, makes the memory this process frees stay in it for reuse.

    XLA:CPU allocates a program's temporaries each time it runs and frees them after, from its
    worker threads. glibc gives such blocks back to the kernel (large ones are mmap'd; a worker
    thread's arena gets its own mmap'd heaps; heap tops are trimmed), so every run faults all of
    those pages in again: a training step of the 35M `bench.peers` model re-faulted 2.3 GB each
    time (580k page faults; 1 to 7 s of system time on the shared 2-core machine, against 4 s of
    compute). One arena, no mmap, no trimming: each page is faulted once. The process keeps its
    peak heap (it reaches it every step anyway). Must run before JAX starts its backend (its
    threads' arenas are made then); `cli.run` calls it when JAX runs on the CPU. Returns whether
    it applied (False without glibc's mallopt).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all([mallopt(_M_ARENA_MAX, 1) == 1, mallopt(_M_MMAP_MAX, 0) == 1, mallopt(_M_TRIM_THRESHOLD, -1) == 1])


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: must be an integer") from None


def initialize_multihost() -> None:
    """Joins this process to the multi-process JAX runtime (``jax.distributed.initialize``).

    Coordinator, process count and id come from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID`` where set (``launch/local.sh``), else from JAX's discovery (TPU pod
    metadata, SLURM). CPU collectives go through gloo, so that processes on CPUs (one machine or
    several) can run cross-process programs; TPU and GPU hosts use their own. Must run before
    any other JAX call.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(num_processes=_env_int("JAX_NUM_PROCESSES"),
                               process_id=_env_int("JAX_PROCESS_ID"))
    logging.info("multi-host: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
