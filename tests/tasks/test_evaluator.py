"""ExactMatchEvaluator on hand-made batches: unit grouping, buckets, padding, shape errors."""
import numpy as np
import pytest

from sleep_jax.tasks.evaluator import ExactMatchEvaluator

from .util import oracle_predictions as oracle


def batch():
    """Two examples, T = 6, two answer units each; example 1's unit 1 is absent."""
    tokens = np.array([[5, 1, 2, 3, 4, 0], [5, 1, 2, 3, 4, 0]])
    answer_id = np.array([[-1, 0, 0, 1, -1, -1], [0, -1, -1, -1, -1, -1]])
    difficulty = np.array([[2, 7], [7, 2]])
    return {"tokens": tokens, "answer_id": answer_id, "difficulty": difficulty}


def test_oracle_and_one_wrong_position():
    b = batch()
    evaluator = ExactMatchEvaluator("k")
    evaluator.add(b, oracle(b["tokens"]))
    assert evaluator.result() == {"accuracy": 1.0, "by_difficulty": {"k=2": 1.0, "k=7": 1.0},
                                  "examples": 2, "answers": 3}
    wrong = oracle(b["tokens"])
    wrong[0, 2] = 9             # second position of example 0's unit 0 (difficulty 2)
    wrong[0, 4] = 9             # unscored: no effect
    evaluator = ExactMatchEvaluator("k")
    evaluator.add(b, wrong)
    result = evaluator.result()
    assert result["by_difficulty"] == {"k=2": 0.0, "k=7": 1.0}
    assert result["accuracy"] == pytest.approx(2 / 3)


def test_accumulates_and_ignores_padding_examples():
    b = batch()
    empty = {"tokens": np.zeros((1, 6), int), "answer_id": np.full((1, 6), -1), "difficulty": np.full((1, 2), -1)}
    evaluator = ExactMatchEvaluator("t")
    evaluator.add(b, oracle(b["tokens"]))
    evaluator.add(empty, np.zeros((1, 6), int))
    evaluator.add(b, np.zeros_like(b["tokens"]))
    result = evaluator.result()
    assert (result["examples"], result["answers"], result["accuracy"]) == (4, 6, 0.5)
    assert ExactMatchEvaluator("t").result() == {"accuracy": 0.0, "by_difficulty": {}, "examples": 0, "answers": 0}


def test_errors():
    b = batch()
    evaluator = ExactMatchEvaluator("k")
    with pytest.raises(ValueError, match="must have the shape of batch"):
        evaluator.add(b, np.zeros((2, 5), int))
    with pytest.raises(ValueError, match=r"difficulty'\] must be \[B, A\]"):
        evaluator.add({**b, "difficulty": np.zeros(2, int)}, oracle(b["tokens"]))
    with pytest.raises(ValueError, match="holds unit 1 but difficulty has 1 units"):
        evaluator.add({**b, "difficulty": np.zeros((2, 1), int)}, oracle(b["tokens"]))
    bad = b["answer_id"].copy()
    bad[0, -1] = 0
    with pytest.raises(ValueError, match="last position"):
        evaluator.add({**b, "answer_id": bad}, oracle(b["tokens"]))


def test_loss_is_the_mean_over_each_units_positions_then_over_units():
    b = batch()
    nll = np.zeros((2, 6))
    nll[0, 1], nll[0, 2] = 1.0, 3.0   # example 0, unit 0 (difficulty 2): mean 2
    nll[0, 3] = 5.0                   # example 0, unit 1 (difficulty 7)
    nll[1, 0] = 1.0                   # example 1, unit 0 (difficulty 7)
    nll[0, 4] = 100.0                 # unscored: no effect
    evaluator = ExactMatchEvaluator("k")
    evaluator.add(b, oracle(b["tokens"]), nll=nll)
    result = evaluator.result()
    assert result["loss_by_difficulty"] == {"k=2": 2.0, "k=7": 3.0}
    assert result["loss"] == pytest.approx(8 / 3)
    evaluator.add(b, oracle(b["tokens"]))  # a batch without nll: no loss is reported
    assert "loss" not in evaluator.result()
    with pytest.raises(ValueError, match="nll"):
        evaluator.add(b, oracle(b["tokens"]), nll=nll[:, :5])
