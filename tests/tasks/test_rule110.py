"""Rule 110: labels against an independent brute-force simulator, layout, evaluator."""
import numpy as np
import pytest

from sleep_jax import tasks

from .util import eval_batch, oracle_predictions

# Rule 110: new cell from (left, cell, right); 110 = 0b01101110.
RULE110 = {"111": "0", "110": "1", "101": "1", "100": "0", "011": "1", "010": "1", "001": "1", "000": "0"}


def brute_force(state: str, steps: int) -> str:
    """`steps` steps of Rule 110 on a bit string, periodic boundary, one cell at a time."""
    for _ in range(steps):
        state = "".join(RULE110[state[i - 1] + state[i] + state[(i + 1) % len(state)]]
                        for i in range(len(state)))
    return state


def test_brute_force_itself():
    assert [brute_force("00000001", t) for t in range(4)] == ["00000001", "00000011", "00000111", "00001101"]
    assert brute_force("10000000", 1) == "10000001"  # wraps around the boundary


@pytest.mark.parametrize("size", tasks.SIZES)
def test_labels_match_brute_force(size):
    config = tasks.default_config("rule110", size)
    config.steps, config.eval_steps = (0, 1, 2, 3, 7), (0, 1, 2, 3)
    task = tasks.make(config)
    bits = task.bits
    checked_steps = set()
    for split in ("train", "eval"):
        for index in range(40):
            example = task.dataset(split, 5)[index]
            text = task.vocab.decode(example["tokens"])
            states = [text[i * bits:(i + 1) * bits] for i in range(4)]
            assert text[4 * bits] == "|"
            labels = text[4 * bits + 1:4 * bits + 5]
            t = int(example["difficulty"][0])
            assert labels == "".join(brute_force(s, t)[0] for s in states)
            assert text[4 * bits + 5:] == "<pad>" * (bits - 5)
            record = task.describe(split, 5, index)
            assert record["states"] == states and record["labels"] == [int(c) for c in labels]
            assert record["t"] == t and record["text"] == text.replace("<pad>", "")
            checked_steps.add(t)
    assert checked_steps == {0, 1, 2, 3, 7}


def test_scored_positions_predict_the_labels():
    task = tasks.make(tasks.default_config("rule110", "tiny"))
    example = task.dataset("train", 0)[0]
    scored = np.flatnonzero(example["loss_mask"])
    np.testing.assert_array_equal(scored, [32, 33, 34, 35])
    assert example["tokens"][32] == task.vocab.sep_id
    assert set(task.vocab.decode(example["tokens"][scored + 1]).replace(" ", "")) <= {"0", "1"}


def test_eval_steps_default_to_the_trained_t():
    config = tasks.default_config("rule110", "tiny")
    config.steps = (3,)
    assert tasks.make(config).eval_steps == (3,)
    assert tasks.make(tasks.default_config("rule110", "paper")).eval_steps == (1,)   # the task's own default t


def test_evaluator_oracle_random_and_one_wrong_label():
    config = tasks.default_config("rule110", "tiny")
    config.eval_steps = (0, 1, 2, 3)
    task = tasks.make(config)
    batch = eval_batch(task, 256)
    oracle = oracle_predictions(batch["tokens"])
    evaluator = task.evaluator()
    evaluator.add(batch, oracle)
    result = evaluator.result()
    assert result["accuracy"] == 1.0 and result["label_accuracy"] == [1.0] * 4
    assert result["by_difficulty"] == {"t=0": 1.0, "t=1": 1.0, "t=2": 1.0, "t=3": 1.0}
    assert result["examples"] == 256

    rng = np.random.default_rng(0)
    random = task.vocab.id("0") + rng.integers(0, 2, batch["tokens"].shape)
    evaluator = task.evaluator()
    evaluator.add(batch, random)
    result = evaluator.result()
    assert abs(result["accuracy"] - 1 / 16) < 0.05          # chance: 4 fair bits
    assert all(abs(a - 0.5) < 0.1 for a in result["label_accuracy"])

    one_wrong = oracle.copy()
    one_wrong[:, 34] = task.vocab.id("0") + task.vocab.id("1") - oracle[:, 34]   # flip label 2
    evaluator = task.evaluator()
    evaluator.add(batch, one_wrong)
    result = evaluator.result()
    assert result["accuracy"] == 0.0 and result["label_accuracy"] == [1.0, 1.0, 0.0, 1.0]
