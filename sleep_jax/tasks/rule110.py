"""Rule 110: predict the first bit of four cellular-automaton states after t steps.

Layout with b bits (window L = b, T = 5b, kinds "CCCCP"):

    window 0..3: state i as b characters '0'/'1' (one state per window, consolidated)
    window 4:    '|' label0 label1 label2 label3 <pad> ... (the separator makes label 0 predicted
                 from inside the prediction window)

Label i is bit 0 (the leftmost character) of state i after t steps of Rule 110 with periodic
boundary. One answer unit per example: exact match means all four labels right; the evaluator also
reports per-label accuracy. Training draws t uniformly from `steps`; eval cycles through
`eval_steps` (by default the trained t). Bucket names `t=<t>`. The sequence does not state t, so a model is normally trained
at one t (`steps` of one value, the default); several values make the labels ambiguous.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from sleep_jax.tasks import config as config_lib
from sleep_jax.tasks.evaluator import ExactMatchEvaluator
from sleep_jax.tasks.task import Layout, Task, eval_value, example_rng
from sleep_jax.tasks.vocab import PAD, Vocab

STATES = 4
DEFAULTS = {
    "bits": 24,              # b: bits per state, also the window L
    "steps": (1,),           # training t, drawn uniformly
    "eval_steps": (),        # eval t, cycled over the eval split; () = the trained t (`steps`)
    "eval_examples": 1024,   # a multiple of len(eval_steps)
}
TINY = {"bits": 8, "eval_examples": 256}
# New cell value for each neighbourhood 4 * left + 2 * cell + right: bit k of the rule number 110.
RULE_TABLE = np.array([(110 >> k) & 1 for k in range(8)], np.uint8)


def rule110_steps(states: np.ndarray, steps: int) -> np.ndarray:
    """`steps` steps of Rule 110 on each row of `states` (uint8 0/1 `[..., b]`), periodic boundary."""
    for _ in range(steps):
        wrapped = np.concatenate([states[..., -1:], states, states[..., :1]], axis=-1)
        states = RULE_TABLE[4 * wrapped[..., :-2] + 2 * states + wrapped[..., 2:]]
    return states


@dataclasses.dataclass(frozen=True)
class Rule110Problem:
    """Four `b`-bit initial states (uint8 `[4, b]`), the step count `t` and the labels `[4]`."""
    t: int
    states: np.ndarray
    labels: np.ndarray


class Rule110Evaluator(ExactMatchEvaluator):
    """Exact match over the 4 labels, plus `label_accuracy`: accuracy of label i alone."""

    def __init__(self, label_positions: np.ndarray):
        super().__init__("t")
        self._positions = label_positions
        self._label_right = np.zeros(STATES, np.int64)
        self._label_total = 0

    def add(self, batch: Mapping[str, np.ndarray], predictions: np.ndarray, nll: np.ndarray | None = None,
            passes: np.ndarray | None = None) -> None:
        super().add(batch, predictions, nll, passes)
        tokens, predictions = np.asarray(batch["tokens"]), np.asarray(predictions)
        real = (np.asarray(batch["answer_id"])[:, self._positions] >= 0).all(axis=1)
        right = predictions[real][:, self._positions] == tokens[real][:, self._positions + 1]
        self._label_right += right.sum(axis=0)
        self._label_total += int(real.sum())

    def result(self) -> dict:
        total = max(self._label_total, 1)
        return {**super().result(), "label_accuracy": (self._label_right / total).tolist()}


class Rule110Task(Task):
    """Rule 110 with `bits`-bit states; see the module docstring for the layout."""
    name = "rule110"
    bucket = "t"
    answers = 1

    def __init__(self, config: Mapping[str, Any]):
        self.config = config_lib.merge(self.name, config, DEFAULTS)
        self.bits = config_lib.int_value(self.config, "bits", low=STATES + 1)
        self.steps = config_lib.int_tuple(self.config, "steps", low=0)
        self.eval_steps = (self.steps if self.config["eval_steps"] in ((), [])
                           else config_lib.int_tuple(self.config, "eval_steps", low=0))
        self.eval_examples = config_lib.int_value(self.config, "eval_examples", low=1)
        config_lib.multiple_of("eval_examples", self.eval_examples, len(self.eval_steps),
                               "every eval_steps bucket gets the same number of examples")
        self.vocab = Vocab((PAD, "|", "0", "1"), word_level=False, separator="|")
        self.layout = Layout(seq_len=(STATES + 1) * self.bits, window=self.bits, kinds="C" * STATES + "P")
        # Position STATES*b holds '|'; the logits there and at the next 3 positions predict the labels.
        self.label_positions = STATES * self.bits + np.arange(STATES)

    def problem(self, split: str, seed: int, index: int) -> Rule110Problem:
        rng = example_rng(seed, split, index)
        states = rng.integers(0, 2, (STATES, self.bits), dtype=np.uint8)
        if split == "train":
            t = self.steps[rng.integers(len(self.steps))]
        else:
            t = eval_value(self.eval_steps, index)
        return Rule110Problem(t=t, states=states, labels=rule110_steps(states, t)[:, 0])

    def features(self, problem: Rule110Problem) -> dict[str, np.ndarray]:
        zero = self.vocab.id("0")
        tokens = np.full(self.layout.seq_len, self.vocab.pad_id, np.int32)
        tokens[:STATES * self.bits] = zero + problem.states.reshape(-1)
        tokens[STATES * self.bits] = self.vocab.sep_id
        tokens[self.label_positions + 1] = zero + problem.labels
        answer_id = np.full(self.layout.seq_len, -1, np.int32)
        answer_id[self.label_positions] = 0
        return self.pack(tokens, answer_id, [problem.t])

    def record(self, problem: Rule110Problem) -> dict[str, Any]:
        return {"t": problem.t,
                "states": ["".join(map(str, row)) for row in problem.states.tolist()],
                "labels": problem.labels.tolist()}

    def chance(self) -> float:
        """All four labels guessed right by coin flips: 1/16."""
        return 0.5 ** STATES

    def evaluator(self) -> Rule110Evaluator:
        return Rule110Evaluator(self.label_positions)
