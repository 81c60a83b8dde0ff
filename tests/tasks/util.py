"""Helpers shared by the task tests."""
import numpy as np


def oracle_predictions(tokens: np.ndarray) -> np.ndarray:
    """Predictions `[B, T]` that are right everywhere: position i predicts token i + 1."""
    predictions = np.zeros_like(tokens)
    predictions[:, :-1] = tokens[:, 1:]
    return predictions


def eval_batch(task, count: int) -> dict:
    """The first `count` eval examples (seed 0) of a task as one batch."""
    dataset = task.dataset("eval", 0)
    return {key: np.stack([dataset[i][key] for i in range(count)]) for key in dataset[0]}
