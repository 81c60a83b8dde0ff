"""Exact-match scoring of greedy predictions, overall and per difficulty bucket.

An example holds `A` answer units (Rule 110: 1 unit of 4 labels; Depo: 10 queries; GSM: 1 integer).
Its features say which positions belong to which unit and how hard each unit is:

- `tokens int32[T]`: the sequence.
- `answer_id int32[T]`: `a` in `[0, A)` at each scored position of unit `a` (the logits at position
  `i` predict token `i + 1`), -1 elsewhere. Equals `loss_mask - 1` where `loss_mask` is 0.
- `difficulty int32[A]`: the difficulty value of each unit, named `<bucket>=<value>` in results.

A unit is right when every one of its positions is predicted exactly; its loss is the mean
next-token cross-entropy (nats) over its positions. Units with no scored position (e.g. the
all-padding examples that fill the last eval batch) are not counted.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


class ExactMatchEvaluator:
    """Accumulates exact-match accuracy over answer units, overall and by difficulty.

    Args:
      bucket: the difficulty name in result keys, e.g. `"t"` gives buckets `"t=0"`, `"t=1"`, ...
    """

    def __init__(self, bucket: str):
        self.bucket = bucket
        self._right: dict[int, int] = {}
        self._total: dict[int, int] = {}
        self._loss: dict[int, float] = {}
        self._units_without_loss = 0
        self._examples = 0
        self._passes: dict[int, float] = {}        # bucket value -> sum over its units of the row's mean passes
        self._histogram: dict[int, int] = {}       # passes -> consolidation windows (of rows with units)
        self._units_without_passes = 0

    def add(self, batch: Mapping[str, np.ndarray], predictions: np.ndarray, nll: np.ndarray | None = None,
            passes: np.ndarray | None = None) -> None:
        """Scores one batch.

        Args:
          batch: numpy arrays `tokens int[B, T]`, `answer_id int[B, T]`, `difficulty int[B, A]`.
          predictions: `int[B, T]`, the greedy token predicted at each position (for token i+1).
          nll: optional `float[B, T]`, the cross-entropy (nats) of token i+1 at each position; when
            given for every batch, the result holds the loss overall and by difficulty.
          passes: optional `int[B, C]`, the sleep passes each of the row's C consolidation windows
            ran; when given for every batch, the result holds the passes overall and by difficulty.
        """
        tokens, answer_id, difficulty = (np.asarray(batch[k]) for k in ("tokens", "answer_id", "difficulty"))
        predictions = np.asarray(predictions)
        if predictions.shape != tokens.shape or answer_id.shape != tokens.shape:
            raise ValueError(f"predictions {predictions.shape} and batch['answer_id'] {answer_id.shape} "
                             f"must have the shape of batch['tokens'] {tokens.shape}")
        if nll is not None and np.shape(nll) != tokens.shape:
            raise ValueError(f"nll {np.shape(nll)} must have the shape of batch['tokens'] {tokens.shape}")
        if difficulty.ndim != 2 or difficulty.shape[0] != tokens.shape[0]:
            raise ValueError(f"batch['difficulty'] must be [B, A] with B={tokens.shape[0]}, "
                             f"got {difficulty.shape}")
        if (answer_id[:, -1] >= 0).any():
            raise ValueError("batch['answer_id'] scores the last position, which predicts no token")
        units = difficulty.shape[1]
        rows, cols = np.nonzero(answer_id[:, :-1] >= 0)
        unit = answer_id[rows, cols]
        if unit.size and unit.max() >= units:
            raise ValueError(f"batch['answer_id'] holds unit {unit.max()} but difficulty has {units} units")
        wrong_position = predictions[rows, cols] != tokens[rows, cols + 1]
        present = np.zeros((tokens.shape[0], units), bool)
        present[rows, unit] = True
        wrong = np.zeros_like(present)
        np.logical_or.at(wrong, (rows, unit), wrong_position)
        for value, is_right in zip(difficulty[present].tolist(), (~wrong[present]).tolist()):
            self._total[value] = self._total.get(value, 0) + 1
            self._right[value] = self._right.get(value, 0) + is_right
        if nll is not None:
            unit_loss, unit_positions = np.zeros(present.shape), np.zeros(present.shape)
            np.add.at(unit_loss, (rows, unit), np.asarray(nll, np.float64)[rows, cols])
            np.add.at(unit_positions, (rows, unit), 1.0)
            for value, loss in zip(difficulty[present].tolist(), (unit_loss[present] / unit_positions[present]).tolist()):
                self._loss[value] = self._loss.get(value, 0.0) + loss
        else:
            self._units_without_loss += int(present.sum())
        if passes is not None:
            self._add_passes(np.asarray(passes), present, difficulty)
        else:
            self._units_without_passes += int(present.sum())
        self._examples += int(present.any(axis=1).sum())

    def _add_passes(self, passes: np.ndarray, present: np.ndarray, difficulty: np.ndarray) -> None:
        """Each unit counts its row's mean passes per consolidation window; the histogram counts
        the windows of rows with units."""
        if passes.ndim != 2 or passes.shape[0] != present.shape[0]:
            raise ValueError(f"passes must be [B, C] with B={present.shape[0]}, got {passes.shape}")
        if passes.shape[1] == 0:
            return
        row_mean = np.broadcast_to(passes.mean(axis=1, dtype=np.float64)[:, None], present.shape)
        for value, mean in zip(difficulty[present].tolist(), row_mean[present].tolist()):
            self._passes[value] = self._passes.get(value, 0.0) + mean
        counts = np.bincount(passes[present.any(axis=1)].ravel())
        for n in np.flatnonzero(counts).tolist():
            self._histogram[n] = self._histogram.get(n, 0) + int(counts[n])

    def result(self) -> dict:
        """`{"accuracy", "by_difficulty": {"<bucket>=<value>": accuracy}, "examples", "answers"}`, and
        `"loss"`, `"loss_by_difficulty": {"<bucket>=<value>": mean unit loss}` when every batch had `nll`;
        `"mean_passes"` (sleep passes per consolidation window, over units), `"mean_passes_by_difficulty"`
        and `"passes_histogram": {"<n>": windows that ran n passes}` when every batch had `passes`
        and some had consolidation windows."""
        answers = sum(self._total.values())
        result = {
            "accuracy": sum(self._right.values()) / answers if answers else 0.0,
            "by_difficulty": {f"{self.bucket}={value}": self._right[value] / self._total[value]
                              for value in sorted(self._total)},
            "examples": self._examples,
            "answers": answers,
        }
        if answers and not self._units_without_loss:
            result["loss"] = sum(self._loss.values()) / answers
            result["loss_by_difficulty"] = {f"{self.bucket}={value}": self._loss[value] / self._total[value]
                                            for value in sorted(self._total)}
        if answers and not self._units_without_passes and self._passes:
            result["mean_passes"] = sum(self._passes.values()) / answers
            result["mean_passes_by_difficulty"] = {f"{self.bucket}={value}": self._passes[value] / self._total[value]
                                              for value in sorted(self._total)}
            result["passes_histogram"] = {str(n): self._histogram[n] for n in sorted(self._histogram)}
        return result
