"""The Task base class: index-addressable examples as grain datasets, in a static window layout.

A task generates example `index` of a split from its own random generator seeded with
`(seed, split, index)`, so an example never depends on how many processes read the data or in
which order: process `p` of `P` reads indices `p, p + P, p + 2P, ...` of the same sequence.

Every example is a dict of numpy arrays:

- `tokens int32[T]`, the sequence; `loss_mask int32[T]`, 1 where the logits at position `i`
  (which predict token `i + 1`) are scored;
- `answer_id int32[T]` and `difficulty int32[A]`, read by the evaluator (see `evaluator.py`).

Subclasses implement `problem` (the structured example), `features` (its arrays) and `record`
(a JSON-able description for people and for `show`).
"""
from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Sequence

import grain
import numpy as np

from sleep_jax.tasks.evaluator import ExactMatchEvaluator
from sleep_jax.tasks.vocab import Vocab
from sleep_jax.windows import kinds_from_mask

SPLITS = ("train", "eval")
# The training split is index-addressable and, in practice, endless.
TRAIN_EXAMPLES = 2**40


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static window layout of a task's examples. Windows are counted from each sequence's
    first token; padding, if any, follows the answer (Depo's left-padded cycle is part of its text).

    Attributes:
      seq_len: T, tokens per example, `window * len(kinds)`.
      window: L, tokens per window.
      kinds: one letter per window for the example whose answer comes last: `C` (consolidation:
        nothing scored) or `P` (prediction: holds scored positions). An example whose answer
        starts in an earlier window has the kinds `sleep.kinds_from_mask` reads off its loss mask
        (its windows after the answer are not read).
      answer_windows: the windows an example's answer may start in (default: the first `P` of
        `kinds`, the same for every example). A batch holds examples of one answer window.
    """
    seq_len: int
    window: int
    kinds: str
    answer_windows: tuple[int, ...] = ()

    def __post_init__(self):
        if self.seq_len != self.window * len(self.kinds) or set(self.kinds) - {"C", "P"} or "P" not in self.kinds:
            raise ValueError(f"layout seq_len={self.seq_len} must be window={self.window} times "
                             f"len(kinds={self.kinds!r}), and kinds only C and P (at least one P)")
        if not self.answer_windows:
            object.__setattr__(self, "answer_windows", (self.kinds.index("P"),))


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of example `index` of `split`; a pure function of its arguments."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def batch_rng(seed: int, split: str, batch: int) -> np.random.Generator:
    """The generator of what global batch `batch` of `split` shares (e.g. its answer window); a
    stream of its own, apart from every example's."""
    return np.random.default_rng([seed, SPLITS.index(split), batch, 1])


def eval_value(values, unit):
    """Difficulty of eval answer unit number `unit` (an int, or an int array with `values` a numpy
    array): the values in turn, so every bucket gets the same share of the eval set."""
    return values[unit % len(values)]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _check_read(seed: int, process_index: int, process_count: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, process_count={process_count}), got {process_index}")


def check_batches(split: str, seed: int, batch_size: int, process_index: int, process_count: int) -> None:
    """The arguments of `Task.batches` (ValueError naming the one at fault)."""
    _check_split(split)
    _check_read(seed, process_index, process_count)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class Task(abc.ABC):
    """A task: vocabulary, layout, example generator, datasets and evaluator.

    Subclass attributes: `name`, `bucket` (difficulty name, e.g. "t"), `vocab`, `layout`,
    `answers` (A, answer units per example), `eval_examples`, `config` (the validated dict).
    """
    name: str
    bucket: str
    vocab: Vocab
    layout: Layout
    answers: int
    eval_examples: int
    config: dict[str, Any]
    train_size: int | None = None   # examples in one epoch of "train"; None = endless

    @abc.abstractmethod
    def problem(self, split: str, seed: int, index: int) -> Any:
        """The structured example `index` of `split` (task-specific dataclass)."""

    @abc.abstractmethod
    def features(self, problem: Any) -> dict[str, np.ndarray]:
        """The arrays of a problem: tokens, loss_mask, answer_id, difficulty."""

    @abc.abstractmethod
    def record(self, problem: Any) -> dict[str, Any]:
        """A JSON-able description of a problem (what `show --json` prints, without "text")."""

    @abc.abstractmethod
    def chance(self) -> float:
        """Exact-match accuracy of a uniform guess at each answer unit: the floor a trained
        model's accuracy is read against (eval.json's ``chance``)."""

    def evaluator(self) -> ExactMatchEvaluator:
        """A fresh evaluator for this task's batches."""
        return ExactMatchEvaluator(self.bucket)

    def _first_answer(self) -> tuple[np.ndarray, int, int]:
        """(tokens, first, last) of eval example 0's first answer unit: its scored positions
        ``first..last`` (the logits at ``first`` predict the answer's first token)."""
        example = self.example("eval", 0, 0)
        answer_id = example["answer_id"]
        last = first = int(np.flatnonzero(answer_id >= 0)[0])
        while answer_id[last + 1] >= 0:  # the last position is never scored
            last += 1
        return example["tokens"], first, last

    def answer_tokens(self) -> int:
        """Most tokens one answer unit takes after its prompt: what ``generate`` makes by default.
        Here eval example 0's first unit (fixed-layout tasks: every unit has this length)."""
        _, first, last = self._first_answer()
        return last - first + 1

    def check_prompt(self, tokens: Sequence[int]) -> str | None:
        """Why ``tokens`` (a prompt for ``generate``) is not in this task's format, or None.
        Here (fixed-layout tasks): every prompt has the length of the examples' text before the
        first answer and ends with the same token (the one whose logits predict the answer)."""
        example, first, _ = self._first_answer()
        length, end = first + 1, self.vocab.decode(example[first:first + 1])
        if len(tokens) == length and list(tokens[-1:]) == [int(example[first])]:
            return None
        got_end = self.vocab.decode(list(tokens[-1:]))
        return (f"{len(tokens)} tokens ending in {got_end!r}; this {self.name} config reads {length} "
                f"tokens ending in {end!r} before its answer (its windows would not line up with "
                f"training)")

    def example(self, split: str, seed: int, index: int) -> dict[str, np.ndarray]:
        """The features of example `index` of `split`."""
        _check_split(split)
        return self.features(self.problem(split, seed, index))

    def describe(self, split: str, seed: int, index: int) -> dict[str, Any]:
        """`record` of example `index` plus its decoded `"text"` (padding left out)."""
        problem = self.problem(split, seed, index)
        tokens = self.features(problem)["tokens"]
        return {**self.record(problem), "text": self.vocab.decode(tokens[tokens != self.vocab.pad_id])}

    def empty_example(self) -> dict[str, np.ndarray]:
        """An all-padding example with nothing scored: fills the last eval batch."""
        seq_len = self.layout.seq_len
        return {
            "tokens": np.full(seq_len, self.vocab.pad_id, np.int32),
            "loss_mask": np.zeros(seq_len, np.int32),
            "answer_id": np.full(seq_len, -1, np.int32),
            "difficulty": np.full(self.answers, -1, np.int32),
        }

    def pack(self, tokens: np.ndarray, answer_id: np.ndarray, difficulty: Sequence[int]) -> dict[str, np.ndarray]:
        """The feature dict of one example from its tokens `[T]` and answer ids `[T]` (-1: unscored)."""
        return {
            "tokens": tokens.astype(np.int32, copy=False),
            "loss_mask": (answer_id >= 0).astype(np.int32),
            "answer_id": answer_id.astype(np.int32, copy=False),
            "difficulty": np.asarray(difficulty, np.int32),
        }

    def dataset(self, split: str, seed: int, *, process_index: int = 0,
                process_count: int = 1) -> grain.MapDataset:
        """This process's share of a split as a grain `MapDataset` of feature dicts.

        "train" holds `TRAIN_EXAMPLES` (2**40) independent examples; "eval" the fixed
        `eval_examples`, difficulties spread evenly. Process `p` of `P` holds indices `p::P`.
        """
        _check_split(split)
        _check_read(seed, process_index, process_count)
        size = TRAIN_EXAMPLES if split == "train" else self.eval_examples
        indices = grain.MapDataset.range(size)[process_index::process_count]
        return indices.map(functools.partial(self.example, split, int(seed)))

    def batches(self, split: str, seed: int, batch_size: int, *, process_index: int = 0,
                process_count: int = 1) -> grain.IterDataset:
        """Batches of `batch_size` examples for this process, as a grain `IterDataset`.

        Its iterator (`iter(...)`) supports `get_state()` / `set_state(state)` for exact resume.
        "train" batches run on for 2**40 / (batch_size * process_count) steps. "eval" batches
        cover the eval set once; the last ones are filled up with `empty_example`s (nothing
        scored, ignored by the evaluator), so every batch has the same shape and every process
        reads the same number of batches.
        """
        check_batches(split, seed, batch_size, process_index, process_count)
        if split == "train":
            examples = self.dataset(split, seed, process_index=process_index, process_count=process_count)
        else:
            per_step = batch_size * process_count
            padded = -(-self.eval_examples // per_step) * per_step
            indices = grain.MapDataset.range(padded)[process_index::process_count]
            examples = indices.map(functools.partial(self._eval_example_or_empty, int(seed)))
        return examples.batch(batch_size, drop_remainder=True).to_iter_dataset()

    def _eval_example_or_empty(self, seed: int, index: int) -> dict[str, np.ndarray]:
        return self.example("eval", seed, index) if index < self.eval_examples else self.empty_example()

    def check_layout(self) -> None:
        """ValueError unless the first eval and train examples fit the layout: with one answer
        window, every C window of the layout unscored and every P window scored; with several,
        an answer starting in one of `layout.answer_windows`."""
        window = self.layout.window
        for split in SPLITS:
            mask = self.example(split, 0, 0)["loss_mask"]
            if len(self.layout.answer_windows) == 1:
                scored = mask.reshape(len(self.layout.kinds), window).sum(axis=1)
                for w, kind in enumerate(self.layout.kinds):
                    if (kind == "C") == bool(scored[w]):
                        raise ValueError(f"task.window={window} gives {self.name} window {w} of kind {kind} "
                                         f"{int(scored[w])} scored positions; choose a window that puts "
                                         "answers in every P window and none in a C window")
            elif kinds_from_mask(mask[None], window).index("P") not in self.layout.answer_windows:
                raise ValueError(f"task.window={window} gives {self.name} an answer starting in window "
                                 f"{kinds_from_mask(mask[None], window).index('P')}, outside the layout's "
                                 f"{self.layout.answer_windows}")
