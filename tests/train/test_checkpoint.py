"""Checkpoints: a checkpoint that cannot be read is reported and the next older one restored;
none readable stops with the list of what was tried; a failed background save stops the run
naming the cause (a real write failure: the file-size limit, as a full disk would give)."""
import os
import resource

import chex
import grain
import jax
import numpy as np
import pytest

from sleep_jax.train.checkpoint import Checkpointer
from sleep_jax.train.errors import RunStopped


def state_at(step):
    rng = np.random.default_rng(step)
    return {"w": jax.numpy.asarray(rng.standard_normal((64, 64), np.float32)),
            "step": jax.numpy.int32(step)}


def iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def save_three(workdir):
    checkpointer = Checkpointer(workdir, max_to_keep=5, save_every=1)
    data = iterator()
    for step in (1, 2, 3):
        next(data)
        checkpointer.save(step, state_at(step), data)
    checkpointer.close()


def largest_array_file(step_dir):
    files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
             for name in names if os.sep + "d" + os.sep in os.path.join(root, name)]
    return max(files, key=os.path.getsize)


def truncate_array(step_dir):
    path = largest_array_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def remove_data_file(step_dir):
    os.remove(os.path.join(step_dir, "data", "process_0-of-1.json"))


def empty_metadata(step_dir):
    open(os.path.join(step_dir, "state", "_METADATA"), "w").close()


ABSTRACT = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state_at(0))


@pytest.mark.parametrize("corrupt", [truncate_array, remove_data_file, empty_metadata])
def test_unreadable_latest_checkpoint_falls_back_to_the_next_older(tmp_path, corrupt, caplog):
    workdir = str(tmp_path)
    save_three(workdir)
    newest = os.path.join(workdir, "checkpoints", "3")
    corrupt(newest)
    checkpointer = Checkpointer(workdir, max_to_keep=5, save_every=1)
    data = iterator()
    with caplog.at_level("WARNING"):
        step, state = checkpointer.restore_newest_readable(ABSTRACT, data,
                                                           set_aside_unreadable=True)
    assert step == 2
    chex.assert_trees_all_close(state, state_at(2))
    assert next(data) == 2  # the iterator is where it was at step 2 (two items consumed)
    assert f"checkpoint {newest} cannot be read" in caplog.text
    # The unreadable one is kept for inspection, out of the way of step 3's new save.
    assert os.path.isdir(os.path.join(workdir, "checkpoints_unreadable", "3"))
    assert checkpointer.latest_step() == 2
    assert checkpointer.save(3, state_at(3), data, force=True)
    checkpointer.close()


def test_no_readable_checkpoint_lists_what_was_tried(tmp_path):
    workdir = str(tmp_path)
    save_three(workdir)
    for step in (1, 2, 3):
        truncate_array(os.path.join(workdir, "checkpoints", str(step)))
    checkpointer = Checkpointer(workdir, max_to_keep=5)
    with pytest.raises(RunStopped) as info:
        checkpointer.restore_newest_readable(ABSTRACT, iterator(), set_aside_unreadable=True)
    message = str(info.value)
    assert "no checkpoint could be read; tried" in message and "\n" not in message
    for step in (3, 2, 1):
        assert os.path.join(workdir, "checkpoints", str(step)) in message
    assert not os.path.exists(os.path.join(workdir, "checkpoints_unreadable"))


def test_failed_background_save_stops_with_its_cause(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), max_to_keep=2, save_every=1)
    checkpointer.save(1, state_at(1), None)
    checkpointer.wait_until_finished()
    big = {"w": jax.numpy.asarray(np.random.default_rng(0).standard_normal((512, 512), np.float32))}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # writes past 64 KiB fail: EFBIG
    try:
        with pytest.raises(RunStopped) as info:
            checkpointer.save(2, big, None)
            checkpointer.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(info.value)
    print(message)
    assert message.startswith(f"saving checkpoint {tmp_path}/checkpoints/2 failed: ")
    assert message.endswith(f"last good checkpoint: {tmp_path}/checkpoints/1")
