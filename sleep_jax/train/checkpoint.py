"""Checkpoints: orbax ``CheckpointManager`` holding the train state and the data iterator state.

A checkpoint at step ``s`` is the directory ``<workdir>/checkpoints/<s>/`` with two items:

- ``state``: ``{"step", "params", "opt_state"}`` (orbax ``StandardSave``; sharded arrays are
  written by every process, each its own shards);
- ``data``: the grain iterator state, one small JSON file per process,
  ``process_<i>-of-<P>.json`` (``grain.checkpoint``).

Orbax writes into a temporary directory and renames it when complete (on several processes:
after every process has written its part), so a process killed while saving leaves no half
checkpoint: ``latest_step`` only ever sees finished ones (atomic). The cadence is orbax's own ``FixedIntervalPolicy`` (``train.checkpoint_every``; the last step is
forced). A checkpoint that cannot be read (a truncated or missing file) is reported and the next
older one restored (``restore_newest_readable``); when training resumes from an older one, the
unreadable newer ones are moved to ``<workdir>/checkpoints_unreadable/`` (kept for inspection,
out of the way of the steps about to be saved again). A background save that failed is raised
by ``check_saved`` as ``RunStopped`` naming the cause.

A checkpoint restores on a different number of processes (or devices, or mesh) where the shapes
allow: arrays are resharded to the new layout, and the data position carries over when every
process saved the same one (each process reads its rows of the same global batch, so after k
steps every iterator stands at batch k whatever the process count). Otherwise the error says so.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from sleep_jax.train.errors import RunStopped

UNREADABLE = "checkpoints_unreadable"


def reason(error: BaseException, limit: int = 300) -> str:
    """An exception as one line: ``Type: message`` with whitespace collapsed, at most ``limit``
    characters."""
    text = re.sub(r"\s+", " ", f"{type(error).__name__}: {error}").strip()
    text = re.sub(r"\s*See full TensorStore details.*", "", text)  # a dump of the whole spec
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Checkpointer:
    """Saves and restores (train state, data iterator) pairs under ``<workdir>/checkpoints``."""

    def __init__(self, workdir: str, *, max_to_keep: int = 3, save_every: int = 0):
        """``save_every``: steps between saves (0: only forced saves, see ``save``)."""
        self._workdir = os.path.abspath(workdir)
        directory = os.path.join(self._workdir, "checkpoints")
        if save_every:
            policy = ocp.checkpoint_managers.FixedIntervalPolicy(save_every)
        else:
            policy = ocp.checkpoint_managers.SpecificStepsPolicy(())
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               save_decision_policy=policy)
        try:
            self._manager = ocp.CheckpointManager(directory, options=options,
                                                  item_names=("state", "data"))
        except Exception as error:  # noqa: BLE001 - e.g. unreadable metadata: say which directory
            raise RunStopped(f"{directory}: cannot open the checkpoints: {reason(error)}") from None
        self._saving_step = None

    @property
    def directory(self) -> str:
        return str(self._manager.directory)

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None if there is none."""
        return self._manager.latest_step()

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is on the save cadence (orbax's policy; never a step already saved)."""
        return self._manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """True, on every process at the same ``step``, once any process of a multi-process run
        got SIGTERM (a TPU maintenance event or preemption, ``scancel``, a signal to
        ``launch/local.sh``): JAX's distributed runtime catches it and the processes agree on a
        step to stop at. The caller saves there and exits; rerunning the command resumes. Always
        False in a single-process run."""
        return self._manager.reached_preemption(step)

    def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None, *,
             force: bool = False) -> bool:
        """Starts saving ``state`` (a pytree of arrays) and the iterator position at ``step`` if
        ``step`` is on the cadence or ``force``; returns whether it did.

        The arrays are copied off the device before this returns, so ``state`` may be donated
        to the next train step; the write itself finishes in the background (``check_saved``).
        """
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:  # the previous save first (orbax waits for it anyway): its failure is its own
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as error:  # noqa: BLE001
            raise RunStopped(self._save_failed(self._saving_step, error)) from None
        try:
            started = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as error:  # noqa: BLE001 - a failed save of any kind stops the run
            raise RunStopped(self._save_failed(step, error)) from None
        if started:
            self._saving_step = step
        return started

    def check_saved(self) -> None:
        """Raises ``RunStopped`` if a background save has failed (cheap: call it every step)."""
        try:
            self._manager.check_for_errors()
        except Exception as error:  # noqa: BLE001
            raise RunStopped(self._save_failed(self._saving_step, error)) from None

    def _save_failed(self, step: int | None, error: BaseException) -> str:
        latest = self._manager.latest_step()
        last_good = self.path(latest) if latest is not None else "none"
        return (f"saving checkpoint {self.path(step) if step is not None else ''} failed: "
                f"{reason(error)}; training stopped; last good checkpoint: {last_good}")

    def restore(self, abstract_state: Any, data_iterator: grain.DatasetIterator | None,
                step: int | None = None) -> Any:
        """Restores the state at ``step`` (default: latest) into ``abstract_state``'s structure,
        dtypes and shardings (a pytree of ``jax.ShapeDtypeStruct`` with ``sharding``), and moves
        ``data_iterator`` (in place) to where it was when that checkpoint was saved."""
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._check_shapes(step, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        saved_position = None
        if data_iterator is not None:
            saved_position = self._data_position(step)
            if saved_position is None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if saved_position is not None:
            data_iterator.set_state(saved_position)
        return restored["state"]

    def restore_newest_readable(self, abstract_state: Any,
                                data_iterator: grain.DatasetIterator | None, *,
                                set_aside_unreadable: bool) -> tuple[int, Any]:
        """``(step, state)`` of the newest checkpoint that reads, newest first; each one that
        fails is logged (path and reason). ``set_aside_unreadable``: move the unreadable ones
        newer than the restored step to ``<workdir>/checkpoints_unreadable/`` (training goes on
        from the restored step and saves those steps again). Raises ``RunStopped`` listing what
        was tried when none reads."""
        tried = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state = self.restore(abstract_state, data_iterator, step)
            except CheckpointMismatch:
                raise  # a readable checkpoint of another run or process count: nothing to skip
            except Exception as error:  # noqa: BLE001 - any failure to read: try the next older
                tried.append((step, reason(error)))
                logging.warning("checkpoint %s cannot be read (%s); trying the next older one",
                                self.path(step), tried[-1][1])
                continue
            if tried and set_aside_unreadable:
                self._set_aside([bad for bad, _ in tried])
            return step, state
        if not tried:
            raise RunStopped(f"{self.directory}: no checkpoint to restore")
        raise RunStopped(f"{self.directory}: no checkpoint could be read; tried " +
                         "; ".join(f"{self.path(step)} ({why})" for step, why in tried))

    def _set_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            target = os.path.join(self._workdir, UNREADABLE)
            os.makedirs(target, exist_ok=True)
            for step in steps:
                destination = os.path.join(target, str(step))
                if os.path.exists(destination):
                    shutil.rmtree(destination)
                shutil.move(self.path(step), destination)
                logging.warning("moved the unreadable checkpoint %s to %s", self.path(step),
                                destination)
        # Every process must see the move before listing steps again (save decisions agree).
        ocp.multihost.sync_global_processes("sleep_jax_set_aside_unreadable")
        self._manager.reload()

    def _check_shapes(self, step: int, abstract_state: Any) -> None:
        """ValueError naming the first array whose saved shape differs from ``abstract_state``'s."""
        path = os.path.join(self.directory, str(step), "state")
        with ocp.StandardCheckpointer() as reader:
            saved = reader.metadata(path).item_metadata
        saved_shapes = {_key_names(key): leaf.shape
                        for key, leaf in jax.tree_util.tree_leaves_with_path(saved)}
        for key, leaf in jax.tree_util.tree_leaves_with_path(abstract_state):
            stored = saved_shapes.get(_key_names(key))
            if stored is not None and tuple(stored) != tuple(leaf.shape):
                raise CheckpointMismatch(
                    f"checkpoint {self.directory}/{step}: state.{'.'.join(_key_names(key))} has "
                    f"shape {tuple(stored)}, this run's config gives {tuple(leaf.shape)}; it "
                    "restores only into a run with the same model and optimiser")

    def _data_position(self, step: int) -> dict | None:
        """The iterator state to set when this process has no file of its own in the checkpoint
        (it was written by a different number of processes), else None (grain restores it).

        Raises ValueError if the saving processes stood at different positions."""
        directory = os.path.join(self.directory, str(step), "data")
        own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if os.path.exists(os.path.join(directory, own)):
            return None
        names = sorted(n for n in os.listdir(directory) if n.startswith("process_")) \
            if os.path.isdir(directory) else []
        if not names:
            raise ValueError(f"checkpoint {directory}: no data iterator state (process_*.json)")
        positions = []
        for name in names:
            with open(os.path.join(directory, name)) as f:
                positions.append(json.load(f))
        if any(position != positions[0] for position in positions):
            raise CheckpointMismatch(
                f"checkpoint {directory}: written by {names[0].split('-of-')[1][:-5]} processes "
                f"whose data iterators stand at different positions; it restores only on that "
                f"many processes, not on {jax.process_count()}")
        return positions[0]

    def wait_until_finished(self) -> None:
        """Blocks until background writes are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for background writes (raising ``RunStopped`` if one failed) and closes."""
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as error:  # noqa: BLE001
            raise RunStopped(self._save_failed(self._saving_step, error)) from None
        finally:
            self._manager.close()

    def close_quietly(self) -> None:
        """``close`` for a run already stopping with another error: a failed background save is
        logged, not raised, so that error is the one reported."""
        try:
            self.close()
        except RunStopped as error:
            logging.error("%s", error)


class CheckpointMismatch(ValueError):
    """A checkpoint that reads but does not fit this run: other array shapes, or data positions
    saved by a different number of processes. Never skipped as unreadable."""


def _key_names(path: tuple) -> tuple[str, ...]:
    """A pytree key path as plain names (dict keys, attribute names and indices alike), so that
    a saved tree (orbax metadata: dict keys) matches the live one (attributes, indices)."""
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct``s carrying ``shardings`` (both trees have the same structure)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state, shardings)
