"""Checkpoints: orbax ``CheckpointManager`` holding the train state and the data iterator state.

A checkpoint at step ``s`` is the directory ``<workdir>/checkpoints/<s>/`` with two items:

- ``state``: ``{"step", "params", "opt_state"}`` (orbax ``StandardSave``; sharded arrays are
  written by every process, each its own shards);
- ``data``: the grain iterator state, one small JSON file per process (``grain.checkpoint``).

Orbax writes into a temporary directory and renames it when complete, so a process killed while
saving leaves no half checkpoint: ``latest_step`` only ever sees finished ones (atomic).
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores (train state, data iterator) pairs under ``<workdir>/checkpoints``."""

    def __init__(self, workdir: str, *, max_to_keep: int = 3):
        directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(directory, options=options,
                                              item_names=("state", "data"))

    @property
    def directory(self) -> str:
        return str(self._manager.directory)

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None if there is none."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None) -> None:
        """Starts saving ``state`` (a pytree of arrays) and the iterator position at ``step``.

        The arrays are copied off the device before this returns, so ``state`` may be donated
        to the next train step; the write itself finishes in the background.
        """
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items))

    def restore(self, abstract_state: Any, data_iterator: grain.DatasetIterator | None,
                step: int | None = None) -> Any:
        """Restores the state at ``step`` (default: latest) into ``abstract_state``'s structure,
        dtypes and shardings (a pytree of ``jax.ShapeDtypeStruct`` with ``sharding``), and moves
        ``data_iterator`` (in place) to where it was when that checkpoint was saved."""
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def wait_until_finished(self) -> None:
        """Blocks until background writes are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct``s carrying ``shardings`` (both trees have the same structure)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state, shardings)
