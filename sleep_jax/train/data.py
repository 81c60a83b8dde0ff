"""Task batches placed on the mesh as global arrays.

The batching itself is the task's (``Task.batches``: a grain ``IterDataset`` whose iterator is
checkpointable). Here:

- training: every process reads its own rows of each global batch and the rows become one
  global ``jax.Array`` sharded over the batch mesh axes;
- evaluation: every process reads the whole eval batch (the evaluator needs all rows and their
  extras) and ships only its addressable shards to its devices.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import grain
import jax
import numpy as np

# The arrays the jitted steps read; every other key of a batch stays on the host.
DEVICE_KEYS = ("tokens", "loss_mask")


def train_iterator(task: Any, *, batch_size: int, seed: int) -> grain.DatasetIterator:
    """A checkpointable iterator over this process's rows of each global training batch
    (dicts of numpy arrays ``[batch_size // process_count, ...]``).

    Process p of P reads examples p, p + P, ... (``Task.batches``), so global batch k holds
    examples ``k * batch_size`` to ``(k + 1) * batch_size - 1`` on any number of processes (only
    the row order depends on P), and after k steps every process's iterator stands at local
    batch k: the position a checkpoint carries to another process count."""
    process_count = jax.process_count()
    if batch_size % process_count:
        raise ValueError(f"train.batch_size={batch_size} must be a multiple of the process "
                         f"count {process_count}")
    return iter(task.batches("train", seed, batch_size // process_count,
                             process_index=jax.process_index(), process_count=process_count))


def eval_batches(task: Any, *, batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """The task's whole eval set in batches of ``batch_size`` (the last one padded with
    unscored examples), identical on every process."""
    return iter(task.batches("eval", seed, batch_size, process_index=0, process_count=1))


def to_global(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.NamedSharding,
              keys=DEVICE_KEYS) -> dict[str, jax.Array]:
    """This process's rows -> global arrays ``[global_batch, ...]`` sharded by ``sharding``."""
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[key]))
            for key in keys}


def host_to_global(batch: Mapping[str, np.ndarray], sharding: jax.sharding.NamedSharding,
                   keys=DEVICE_KEYS) -> dict[str, jax.Array]:
    """A batch present in full on every host -> global arrays (each process fills its shards)."""
    out = {}
    for key in keys:
        array = np.asarray(batch[key])
        out[key] = jax.make_array_from_callback(array.shape, sharding,
                                                lambda index, a=array: a[index])
    return out
