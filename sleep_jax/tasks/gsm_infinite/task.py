"""The GSM-Infinite task: problems (generated or published) as left-padded token sequences.

Text (`<eos>` ends the answer; `<pad>` fills the front):

    <pad>...<pad>What is the total number of adult animals in Elm Park?\\n<statements>\\nAnswer: 42<eos>

The question comes first, no chain of thought. Lengths are counted in the task's tokens:
characters with the built-in character vocabulary (`task.tokenizer=""`, for tiny from-scratch
runs), or a pretrained model's tokens (`task.tokenizer=DIR` with `tokenizer.json`). The problem
(question line and statements) is `target_tokens[0]..target_tokens[1]` tokens; T is the smallest
multiple of the window that holds the longest problem and answer line. Every example is
left-padded so that its `<eos>` is the last token: the answer always lies in the last window,
whatever the problem's length and the window (the first T - L positions are consolidated).
Paper scale: L = 2000, problems 2000..3300 tokens, T = 4000, kinds "CP"; the sliding setting
L = 512 gives T = 3584, kinds "CCCCCCP". Bucket names `ops=<n>`.

`task.data=PATH` reads the published GSM-Infinite problems instead (`read_published`: the hub's
parquet files or the generator's jsonl), keeps those of `target_tokens` tokens, holds out
`eval_examples` of them (the `eval_ops` in turn) and trains on the rest, epoch after epoch; the
text is the row's `problem` then its `question`, the answer the integer after "Answer:" in its
`solution`. `task.train_examples=n` makes the generator's train split a fixed set of n problems
(`train_size`, what a stage's epochs count).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sleep_jax.tasks import config as config_lib
from sleep_jax.tasks.gsm_infinite.generator import (
    LONGEST_PADDING, MAX_OPS, MAX_PROBLEM_TOKENS, MAX_VALUE, GsmProblem, generate, longest_core,
    without_last_removable)
from sleep_jax.tasks.gsm_infinite.published import MAX_PUBLISHED_OPS, PublishedProblem, read_published
from sleep_jax.tasks.task import Layout, Task, eval_value, example_rng
from sleep_jax.tasks.vocab import PAD, TokenizerVocab, Vocab

EOS = "<eos>"
ANSWER_PREFIX = "\nAnswer: "
# The answer line: prefix, at most two digits, <eos>.
ANSWER_TOKENS = len(ANSWER_PREFIX) + len(str(MAX_VALUE)) + 1


DEFAULTS = {
    "ops": tuple(range(1, MAX_OPS + 1)),   # training op counts, drawn uniformly
    "eval_ops": tuple(range(1, MAX_OPS + 1)),
    "window": 2000,                        # L
    "target_tokens": (2000, 3300),         # problem length range (question + statements)
    "eval_examples": 800,                  # a multiple of len(eval_ops)
    "tokenizer": "",                       # "" = characters; else a directory with tokenizer.json
    "data": "",                            # "" = the generator; else published files (read_published)
    "train_examples": 0,                   # generator: 0 = endless, n = a fixed set of n (epochs)
}
TINY = {"ops": (1, 2, 3), "eval_ops": (1, 2, 3), "window": 256, "target_tokens": (768, 1000),
        "eval_examples": 240}


class GsmInfiniteTask(Task):
    """GSM-Infinite style problems; see the module docstring for the layout."""
    name = "gsm_infinite"
    bucket = "ops"
    answers = 1

    def __init__(self, config: Mapping[str, Any]):
        self.config = config_lib.merge(self.name, config, DEFAULTS)
        published = bool(self.config["data"])
        high_ops = MAX_PUBLISHED_OPS if published else MAX_OPS
        self.ops = config_lib.int_tuple(self.config, "ops", low=1, high=high_ops)
        self.eval_ops = config_lib.int_tuple(self.config, "eval_ops", low=1, high=high_ops)
        window = config_lib.int_value(self.config, "window", low=ANSWER_TOKENS)
        low, high = config_lib.int_tuple(self.config, "target_tokens", low=1, length=2)
        self.eval_examples = config_lib.int_value(self.config, "eval_examples", low=1)
        config_lib.multiple_of("eval_examples", self.eval_examples, len(self.eval_ops),
                               "every eval_ops bucket gets the same number of examples")
        train_examples = config_lib.int_value(self.config, "train_examples", low=0)
        for key in ("tokenizer", "data"):
            if not isinstance(self.config[key], str):
                raise ValueError(f"task.{key} must be a path or '', got {self.config[key]!r}")
        if self.config["tokenizer"]:
            self.vocab = TokenizerVocab(self.config["tokenizer"])
            self.length = lambda text: len(self.vocab.encode(text))
        else:
            characters = tuple(chr(c) for c in range(32, 127)) + ("\n",)   # printable ASCII, newline
            self.vocab = Vocab((PAD, EOS) + characters, word_level=False, eos=EOS)
            self.length = len
        self.target_tokens = (low, high)
        if published:
            if train_examples:
                raise ValueError(f"task.train_examples={train_examples}: must be 0 with task.data "
                                 "(the train set is the file's problems)")
            self._read_published(self.config["data"])
        else:
            self._check_generator_lengths(low, high)
            self.train_size = train_examples or None
        answer_room = max(self._answer_tokens(value) for value in self._answer_range())
        if answer_room > window:
            raise ValueError(f"task.window={window}: shorter than an answer line ({answer_room} tokens)")
        windows = -(-(high + answer_room) // window)
        self.layout = Layout(seq_len=windows * window, window=window, kinds="C" * (windows - 1) + "P")

    def _check_generator_lengths(self, low: int, high: int) -> None:
        if high > MAX_PROBLEM_TOKENS:
            raise ValueError(f"task.target_tokens must be <= {MAX_PROBLEM_TOKENS}, got {(low, high)}")
        self.max_padding = self.length(LONGEST_PADDING)
        if high - low <= self.max_padding:
            raise ValueError(f"task.target_tokens must span more than one padding statement "
                             f"({self.max_padding} tokens), got {(low, high)}")
        longest = longest_core(max(self.ops + self.eval_ops), self.length)
        if high < longest:
            raise ValueError(f"task.target_tokens[1] must be >= {longest}, the longest problem with "
                             f"ops={max(self.ops + self.eval_ops)} before distractors, got {high}")

    def _read_published(self, path: str) -> None:
        """The file's problems whose text is `target_tokens` long: eval takes `eval_examples`
        of them, the `eval_ops` in turn; train takes the rest whose op count is in `ops`."""
        low, high = self.target_tokens
        problems = [p for p in read_published(path) if low <= self.length(p.text) <= high]
        by_ops = {ops: [p for p in problems if p.ops == ops] for ops in self.eval_ops}
        per_bucket = self.eval_examples // len(self.eval_ops)
        for ops, found in by_ops.items():
            if len(found) < per_bucket:
                raise ValueError(f"task.eval_examples={self.eval_examples}: task.data={path!r} has "
                                 f"{len(found)} problems of op count {ops} and {low}..{high} tokens, "
                                 f"{per_bucket} needed")
        self.eval_problems = [by_ops[self.eval_ops[i % len(self.eval_ops)]][i // len(self.eval_ops)]
                              for i in range(self.eval_examples)]
        held_out = {p.source for p in self.eval_problems}
        self.train_problems = [p for p in problems if p.ops in self.ops and p.source not in held_out]
        if not self.train_problems:
            raise ValueError(f"task.data={path!r}: no training problem of op count {self.ops} and "
                             f"{low}..{high} tokens is left after the eval set")
        self.train_size = len(self.train_problems)

    def _answer_range(self) -> range:
        if self.config["data"]:
            values = [p.answer for p in self.eval_problems + self.train_problems]
            return range(min(values), max(values) + 1, max(max(values) - min(values), 1))
        return range(0, MAX_VALUE + 1)

    def _answer_tokens(self, value: int) -> int:
        """Tokens of the answer line of `value`: prefix, digits, end token."""
        return self.length(ANSWER_PREFIX) + len(self._answer_ids(value))

    def _answer_ids(self, value: int) -> np.ndarray:
        return np.append(self.vocab.encode_array(str(value)), self.vocab.eos_id).astype(np.int32)

    def problem(self, split: str, seed: int, index: int) -> GsmProblem | PublishedProblem:
        if split == "train" and self.train_size:
            index %= self.train_size   # a fixed train set, read epoch after epoch
        if self.config["data"]:
            return (self.train_problems if split == "train" else self.eval_problems)[index]
        rng = example_rng(seed, split, index)
        ops = self.ops[rng.integers(len(self.ops))] if split == "train" else eval_value(self.eval_ops, index)
        low, high = self.target_tokens
        # Filling stops at the first statement reaching the target, so leave room for one.
        problem = generate(rng, ops, int(rng.integers(low, high - self.max_padding)), self.length)
        while self.length(problem.text) > high:   # a tokenizer can count the joined text longer
            problem = without_last_removable(problem)
        return problem

    def features(self, problem: GsmProblem | PublishedProblem) -> dict[str, np.ndarray]:
        """Left-padded so that the answer's end token is the sequence's last token: the answer
        always lies in the last window, whatever the problem's length."""
        prompt = self.vocab.encode_array(problem.text + ANSWER_PREFIX)
        answer = self._answer_ids(problem.answer)
        seq_len = self.layout.seq_len
        if prompt.size + answer.size > seq_len:
            raise ValueError(f"task.target_tokens={self.target_tokens}: a problem of "
                             f"{prompt.size + answer.size} tokens does not fit {seq_len}")
        tokens = np.full(seq_len, self.vocab.pad_id, np.int32)
        tokens[seq_len - answer.size - prompt.size:seq_len - answer.size] = prompt
        tokens[seq_len - answer.size:] = answer
        answer_id = np.full(seq_len, -1, np.int32)
        answer_id[seq_len - answer.size - 1:seq_len - 1] = 0
        return self.pack(tokens, answer_id, [problem.ops])

    def record(self, problem: GsmProblem | PublishedProblem) -> dict[str, Any]:
        if isinstance(problem, PublishedProblem):
            return {"ops": problem.ops, "answer": problem.answer, "source": problem.source,
                    "tokens": self.length(problem.text)}
        return {"ops": problem.ops, "question": problem.question, "answer": problem.answer,
                "statements": len(problem.statements), "distractors": sum(problem.is_distractor)}
