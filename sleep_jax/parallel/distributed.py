"""Multi-host start: one process per host (TPU pod worker, or SLURM task on a GPU cluster)."""
from __future__ import annotations

import jax
from absl import logging


def initialize_multihost() -> None:
    """Joins this process to the multi-host JAX runtime (``jax.distributed.initialize``).

    With no arguments JAX discovers the coordinator, process count and process id from the
    environment: Cloud TPU metadata on a pod, ``SLURM_*`` variables under ``srun`` (see
    ``launch/``); ``JAX_COORDINATOR_ADDRESS`` overrides the coordinator. Must run before any
    other JAX call.
    """
    jax.distributed.initialize()
    logging.info("multi-host: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
