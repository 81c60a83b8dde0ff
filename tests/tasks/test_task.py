"""Task base behaviour on every task (tiny configs): determinism, process sharding, batches with
resumable iterator state, padded eval batches, and loss masks that match the window kinds."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from sleep_jax import tasks
from sleep_jax.windows import kinds_from_mask
from sleep_jax.tasks.task import Layout, example_rng

from .util import oracle_predictions

NAMES = tasks.TASK_NAMES


def tiny(name):
    return tasks.make(tasks.default_config(name, "tiny"))


def assert_examples_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert a[key].dtype == b[key].dtype == np.int32


def digest(name, count):
    """A hash of the first `count` train and eval examples of a tiny task with seed 7."""
    task, sha = tiny(name), hashlib.sha256()
    for split in ("train", "eval"):
        dataset = task.dataset(split, 7)
        for index in range(count):
            for key, value in sorted(dataset[index].items()):
                sha.update(key.encode() + value.tobytes())
    return sha.hexdigest()


def test_same_examples_in_a_fresh_process():
    """Same seed and index, identical bytes across runs (another interpreter, other hash seed)."""
    code = ("from tests.tasks.test_task import digest, NAMES; "
            "print(' '.join(digest(name, 6) for name in NAMES))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.stdout.split() == [digest(name, 6) for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_seed_dependent(name):
    first, second = tiny(name), tiny(name)
    for split in ("train", "eval"):
        for index in (0, 5, 2**40 - 1 if split == "train" else 17):
            assert_examples_equal(first.dataset(split, 3)[index], second.dataset(split, 3)[index])
    assert not np.array_equal(first.dataset("train", 3)[0]["tokens"], first.dataset("train", 4)[0]["tokens"])
    assert not np.array_equal(first.dataset("train", 3)[0]["tokens"], first.dataset("eval", 3)[0]["tokens"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_two_processes_read_the_one_process_data(name, split):
    task = tiny(name)
    whole = task.dataset(split, 1)
    shards = [task.dataset(split, 1, process_index=p, process_count=2) for p in range(2)]
    if split == "eval":
        assert len(whole) == task.eval_examples == len(shards[0]) + len(shards[1])
    for index in range(10):
        assert_examples_equal(shards[index % 2][index // 2], whole[index])


@pytest.mark.parametrize("name", NAMES)
def test_train_batches_resume_from_iterator_state(name):
    task = tiny(name)
    iterator = iter(task.batches("train", 2, 4, process_index=1, process_count=2))
    first = next(iterator)
    assert {k: v.shape for k, v in first.items()} == {
        "tokens": (4, task.layout.seq_len), "loss_mask": (4, task.layout.seq_len),
        "answer_id": (4, task.layout.seq_len), "difficulty": (4, task.answers)}
    # Batch 0 of process 1 of 2 holds examples 1, 3, 5, 7.
    np.testing.assert_array_equal(first["tokens"][2], task.dataset("train", 2)[5]["tokens"])
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(2)]
    resumed = iter(task.batches("train", 2, 4, process_index=1, process_count=2))
    resumed.set_state(state)
    for want in expected:
        assert_examples_equal(next(resumed), want)


@pytest.mark.parametrize("name", NAMES)
def test_eval_batches_cover_the_eval_set_once(name):
    task = tiny(name)
    batch_size, processes = 7, 2
    per_process = [list(task.batches("eval", 0, batch_size, process_index=p, process_count=processes))
                   for p in range(processes)]
    assert len(per_process[0]) == len(per_process[1]) == -(-task.eval_examples // (batch_size * processes))
    evaluator = task.evaluator()
    seen = 0
    for batches in per_process:
        for batch in batches:
            real = (batch["answer_id"] >= 0).any(axis=1)
            assert (batch["loss_mask"][~real] == 0).all() and (batch["tokens"][~real] == task.vocab.pad_id).all()
            seen += int(real.sum())
            evaluator.add(batch, oracle_predictions(batch["tokens"]))
    result = evaluator.result()
    assert seen == result["examples"] == task.eval_examples
    assert result["accuracy"] == 1.0
    assert result["answers"] == task.eval_examples * task.answers


@pytest.mark.parametrize("name", NAMES)
def test_eval_buckets_are_even(name):
    task = tiny(name)
    dataset = task.dataset("eval", 0)
    values, counts = np.unique(np.concatenate([dataset[i]["difficulty"] for i in range(len(dataset))]),
                               return_counts=True)
    assert len(set(counts.tolist())) == 1
    eval_key = {"rule110": "eval_steps", "depo": "eval_hops", "gsm_infinite": "eval_ops"}[name]
    config = tasks.default_config(name, "tiny")
    assert values.tolist() == sorted(config[eval_key] or config["steps"])   # rule110: () = the trained t


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", tasks.SIZES)
def test_loss_mask_matches_kinds(name, size):
    task = tasks.make(tasks.default_config(name, size))
    layout = task.layout
    for split in ("train", "eval"):
        for index in range(8):
            example = task.dataset(split, 0)[index]
            np.testing.assert_array_equal(example["loss_mask"], (example["answer_id"] >= 0).astype(np.int32))
            assert example["loss_mask"][-1] == 0
            # Windows from the first token: C up to the example's answer window, then P up to its
            # last scored window; an example of the layout's answer window has the layout's kinds.
            kinds = kinds_from_mask(example["loss_mask"][None], layout.window)
            start = kinds.index("P")
            assert start in layout.answer_windows and kinds == "C" * start + "P" * (len(kinds) - start)
            if len(layout.answer_windows) == 1:
                assert kinds == layout.kinds
            assert ((example["tokens"] >= 0) & (example["tokens"] < task.vocab.size)).all()
            # Every answer unit is scored somewhere.
            assert set(example["answer_id"][example["answer_id"] >= 0].tolist()) == set(range(task.answers))


def test_read_errors():
    task = tiny("rule110")
    with pytest.raises(ValueError, match="split must be one of"):
        task.dataset("test", 0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        task.dataset("train", -1)
    with pytest.raises(ValueError, match="process_index must be in"):
        task.dataset("train", 0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        task.batches("eval", 0, 0)
    with pytest.raises(ValueError, match="layout seq_len=10"):
        Layout(seq_len=10, window=4, kinds="CP")


def test_example_rng_streams_differ():
    assert example_rng(0, "train", 1).integers(2**62) != example_rng(0, "eval", 1).integers(2**62)
    assert example_rng(0, "train", 1).integers(2**62) == example_rng(0, "train", 1).integers(2**62)
