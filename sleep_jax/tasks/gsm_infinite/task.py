"""The GSM-Infinite task: problems (generated or published) as token sequences, windows counted
from each problem's first token, as the paper's Algorithm 1 cuts them.

Text (`<eos>` ends the answer; `<pad>` fills what follows):

    What is the total number of adult animals in Elm Park?\n<statements>\nAnswer: 42<eos><pad>...

The question comes first (the model knows the query before reading the context), no chain of
thought. Lengths are counted in the task's tokens: characters with the built-in character
vocabulary (`task.tokenizer=""`, for tiny from-scratch runs), or a pretrained model's tokens
(`task.tokenizer=DIR` with `tokenizer.json`). The problem (question line and statements) is
`target_tokens[0]..target_tokens[1]` tokens; T is the smallest multiple of the window that holds
the longest problem and answer line. The first windows of a problem are consolidated and evicted
before its answer; which window the answer starts in depends on the problem's length: its
"answer window" (`layout.answer_windows`). Paper scale: L = 2000, problems 2000..3300 tokens:
every answer in window 1 (T = 4000, kinds "CP"); the sliding setting L = 512: answers in windows
3..6 (T = 3584). Bucket names `ops=<n>`.

Batches (`batches`): the rows of one batch share their answer window, so one static kinds
string ("C" * w + "P", or "PP" where an answer crosses into the next window) serves the batch;
the train step is compiled once per kinds string (at most a few). A generated problem is drawn
within its answer window's lengths; the window is drawn in proportion to the share of the target
length range it covers: per global batch for the endless train split (`batch_rng`), per example
index for fixed sets (the eval set, `task.train_examples=n`; so their windows are known without
generating anything). A fixed train set (generated, or `task.data`'s) is read epoch by epoch: each
epoch's problems, grouped by answer window, in batches in a seeded order; the eval set is grouped
by window and covered once. `dataset` / `example` give examples one at a time (as `tasks.show`
prints them; endless train examples with their window drawn from the index).

`task.data=PATH` reads the published GSM-Infinite problems instead (`read_published`: the hub's
parquet files or the generator's jsonl), keeps those of `target_tokens` tokens, holds out
`eval_examples` of them (the `eval_ops` in turn) and trains on the rest, epoch after epoch; the
text is the row's `question` then its `problem` (its context), as the generator lays it out, the
answer the integer after "Answer:" in its `solution`. `task.train_examples=n` makes the
generator's train split a fixed set of n problems (`train_size`, what a stage's epochs count).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import grain
import numpy as np
from absl import logging

from sleep_jax.tasks import config as config_lib
from sleep_jax.tasks.gsm_infinite.generator import (MAX_OPS, MAX_VALUE, GsmProblem, capacity, generate,
                                                    longest_core, without_last_removable)
from sleep_jax.tasks.gsm_infinite.published import MAX_PUBLISHED_OPS, PublishedProblem, read_published
from sleep_jax.tasks.task import (SPLITS, TRAIN_EXAMPLES, Layout, Task, batch_rng, check_batches, eval_value,
                                  example_rng)
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
    "eval_examples": 1600,                 # a multiple of len(eval_ops); the paper's: 200 per op count
    "tokenizer": "",                       # "" = characters; else a directory with tokenizer.json
    "data": "",                            # "" = the generator; else published files (read_published)
    "train_examples": 0,                   # generator: 0 = endless, n = a fixed set of n (epochs)
}
TINY = {"ops": (1, 2, 3), "eval_ops": (1, 2, 3), "window": 256, "target_tokens": (768, 1000),
        "eval_examples": 240}


class GsmInfiniteTask(Task):
    """GSM-Infinite style problems; see the module docstring for the layout and the batches."""
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
        self.window = window
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
        prefix = self.length(ANSWER_PREFIX)
        # A problem of n tokens starts its answer in window (n + prefix - 1) // L.
        first, last = (self._answer_window(n + prefix) for n in (low, high))
        windows = -(-(high + answer_room) // window)
        self.layout = Layout(seq_len=windows * window, window=window, kinds="C" * (windows - 1) + "P",
                             answer_windows=tuple(range(first, min(last, windows - 1) + 1)))
        # Problem lengths (tokens) per answer window, within target_tokens: what a batch of that
        # window draws from, and its share of the range (how often training batches take it).
        self.window_lengths = {w: (max(low, w * window + 1 - prefix), min(high, (w + 1) * window - prefix))
                               for w in self.layout.answer_windows}
        spans = np.array([hi - lo + 1 for lo, hi in self.window_lengths.values()], np.float64)
        self.window_shares = spans / spans.sum()

    def _answer_window(self, prompt_tokens: int) -> int:
        """The window holding the first scored position (the prompt's last token) of a prompt."""
        return (prompt_tokens - 1) // self.window

    def _check_generator_lengths(self, low: int, high: int) -> None:
        """The generator's bounds in this task's tokens (`generator.capacity`)."""
        self.max_padding, max_problem = capacity(self.length)
        if high > max_problem:
            raise ValueError(f"task.target_tokens must be <= {max_problem} (the generator's capacity in these "
                             f"tokens), got {(low, high)}")
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
        rows = read_published(path)
        problems = [p for p in rows if low <= self.length(p.text) <= high]
        logging.info("task.data=%s: %d of %d problems are %d..%d tokens long", path, len(problems), len(rows),
                     low, high)
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

    def chance(self) -> float:
        """An answer drawn uniformly from the task's answer values (generator: 0..MAX_VALUE)."""
        if self.config["data"]:
            return 1.0 / len({p.answer for p in self.eval_problems + self.train_problems})
        return 1.0 / (MAX_VALUE + 1)

    def answer_tokens(self) -> int:
        """The longest answer: digits and the end token (generation stops at the end token)."""
        return max(len(self._answer_ids(value)) for value in self._answer_range())

    def check_prompt(self, tokens) -> str | None:
        """A prompt is a problem ending in the answer prefix, of a length whose answer starts in
        one of the layout's answer windows."""
        if not self.vocab.decode(tokens).endswith(ANSWER_PREFIX):  # text: BPE merges across the line
            return f"{len(tokens)} tokens not ending in {ANSWER_PREFIX!r}, the line before every answer"
        window = self._answer_window(len(tokens))
        if window not in self.layout.answer_windows:
            return (f"{len(tokens)} tokens put the answer in window {window}; this config trains answers "
                    f"in windows {self.layout.answer_windows} (task.target_tokens={self.target_tokens})")
        return None

    def _answer_tokens(self, value: int) -> int:
        """Tokens of the answer line of `value`: prefix, digits, end token."""
        return self.length(ANSWER_PREFIX) + len(self._answer_ids(value))

    def _answer_ids(self, value: int) -> np.ndarray:
        return np.append(self.vocab.encode_array(str(value)), self.vocab.eos_id).astype(np.int32)

    def _prompt(self, problem: GsmProblem | PublishedProblem) -> np.ndarray:
        return self.vocab.encode_array(problem.text + ANSWER_PREFIX)

    def answer_window(self, problem: GsmProblem | PublishedProblem) -> int:
        """The window `problem`'s answer starts in (its first scored position's)."""
        return self._answer_window(self._prompt(problem).size)

    # ---- problems ----------------------------------------------------------------------------

    def _generated(self, rng: np.random.Generator, ops: int, low: int, high: int) -> GsmProblem:
        """A generated problem of `ops` ops whose text is at most `high` tokens, drawn to at least
        `low` (filling stops at the first statement reaching the drawn target, so the target leaves
        room for one; a tokenizer can count the joined text longer, so statements are dropped
        while it is too long)."""
        problem = generate(rng, ops, int(rng.integers(low, max(low + 1, high - self.max_padding))), self.length)
        while self.length(problem.text) > high:
            problem = without_last_removable(problem)
        return problem

    def problem(self, split: str, seed: int, index: int) -> GsmProblem | PublishedProblem:
        """Example `index` of `split`: a published problem, or a generated one whose answer window
        is drawn from its index (`_window_of`; the endless train split's batches draw one window
        per batch instead, `_generated_train_batch`)."""
        if self.config["data"]:
            problems = self.train_problems if split == "train" else self.eval_problems
            return problems[index % len(problems)]
        if split == "train" and self.train_size:
            index %= self.train_size   # a fixed train set, read epoch after epoch
        return self._problem_in_window(seed, split, index, self._window_of(seed, split, index))

    def _window_of(self, seed: int, split: str, index: int) -> int:
        """The answer window of generated example `index`, drawn by each window's share."""
        rng = np.random.default_rng([seed, SPLITS.index(split), index, 4])
        return self.layout.answer_windows[rng.choice(len(self.window_shares), p=self.window_shares)]

    def _ops(self, rng: np.random.Generator, split: str, index: int) -> int:
        return self.ops[rng.integers(len(self.ops))] if split == "train" else eval_value(self.eval_ops, index)

    def _problem_in_window(self, seed: int, split: str, index: int, window: int) -> GsmProblem:
        """Generated example `index` of `split` drawn within answer window `window`'s lengths."""
        rng = example_rng(seed, split, index)
        ops = self._ops(rng, split, index)
        low, high = self.window_lengths[window]
        for _ in range(100):
            problem = self._generated(rng, ops, low, high)
            if self.answer_window(problem) == window:
                return problem
        raise RuntimeError(f"gsm_infinite: no problem of ops={ops} with its answer in window {window} "
                           f"({low}..{high} tokens) after 100 draws; widen task.target_tokens")

    def features(self, problem: GsmProblem | PublishedProblem) -> dict[str, np.ndarray]:
        """The problem from the sequence's first token, then the answer line, then padding: the
        answer starts in window `answer_window(problem)`; no padding is read before the problem."""
        prompt = self._prompt(problem)
        answer = self._answer_ids(problem.answer)
        seq_len = self.layout.seq_len
        if prompt.size + answer.size > seq_len:
            raise ValueError(f"task.target_tokens={self.target_tokens}: a problem of "
                             f"{prompt.size + answer.size} tokens does not fit {seq_len}")
        tokens = np.full(seq_len, self.vocab.pad_id, np.int32)
        tokens[:prompt.size] = prompt
        tokens[prompt.size:prompt.size + answer.size] = answer
        answer_id = np.full(seq_len, -1, np.int32)
        answer_id[prompt.size - 1:prompt.size + answer.size - 1] = 0
        return self.pack(tokens, answer_id, [problem.ops])

    def record(self, problem: GsmProblem | PublishedProblem) -> dict[str, Any]:
        common = {"ops": problem.ops, "answer": problem.answer, "tokens": self.length(problem.text),
                  "answer_window": self.answer_window(problem)}
        if isinstance(problem, PublishedProblem):
            return {**common, "source": problem.source}
        return {**common, "question": problem.question, "statements": len(problem.statements),
                "distractors": sum(problem.is_distractor)}

    # ---- batches of one answer window ----------------------------------------------------------

    def batches(self, split: str, seed: int, batch_size: int, *, process_index: int = 0,
                process_count: int = 1) -> grain.IterDataset:
        """Batches of `batch_size` examples for this process whose rows share their answer window
        (the module docstring); global batch k holds rows k * B .. (k + 1) * B - 1 of the batch
        sequence on any number of processes, process p its rows p, p + P, ... Checkpointable
        iterator; "eval" covers the eval set once, each window's last batch filled up with
        `empty_example`s (nothing scored)."""
        check_batches(split, seed, batch_size, process_index, process_count)
        rows = batch_size * process_count
        if split == "eval":
            order = self._eval_order(seed, rows)
            count = len(order) // rows
            load = functools.partial(self._eval_batch, seed, order, rows, process_index, process_count)
        elif self.train_size:
            schedule = self._fixed_schedule(seed, rows)
            count = TRAIN_EXAMPLES // rows
            load = functools.partial(self._fixed_train_batch, seed, schedule, rows, process_index, process_count)
        else:
            count = TRAIN_EXAMPLES // rows
            load = functools.partial(self._generated_train_batch, seed, rows, process_index, process_count)
        return grain.MapDataset.range(count).map(load).to_iter_dataset()

    def _stack(self, examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.stack([e[key] for e in examples]) for key in examples[0]}

    def _generated_train_batch(self, seed, rows, process_index, process_count, batch) -> dict[str, np.ndarray]:
        window = self.layout.answer_windows[batch_rng(seed, "train", batch).choice(len(self.window_shares),
                                                                                    p=self.window_shares)]
        indices = range(batch * rows + process_index, (batch + 1) * rows, process_count)
        return self._stack([self.features(self._problem_in_window(seed, "train", i, window)) for i in indices])

    def _windows(self, seed: int, split: str, count: int) -> list[int]:
        """The answer windows of examples 0..count-1 of a fixed set: drawn from the index for
        generated problems (nothing to generate), measured for published ones."""
        if self.config["data"]:
            return [self.answer_window(self.problem(split, seed, index)) for index in range(count)]
        return [self._window_of(seed, split, index) for index in range(count)]

    @functools.cache
    def _train_set_windows(self, seed: int) -> dict[int, list[int]]:
        """A fixed train set's problem indices by answer window."""
        by_window: dict[int, list[int]] = {}
        for index, window in enumerate(self._windows(seed, "train", self.train_size)):
            by_window.setdefault(window, []).append(index)
        return by_window

    def _fixed_schedule(self, seed: int, rows: int) -> list[tuple[int, int]]:
        """One epoch's batches of a fixed train set: (answer window, batch within that window)."""
        return [(window, j) for window, indices in sorted(self._train_set_windows(seed).items())
                for j in range(-(-len(indices) // rows))]

    def _fixed_train_batch(self, seed, schedule, rows, process_index, process_count, batch) -> dict[str, np.ndarray]:
        epoch, position = divmod(batch, len(schedule))
        order = np.random.default_rng([seed, 0, epoch, 2]).permutation(len(schedule))
        window, j = schedule[order[position]]
        indices = self._train_set_windows(seed)[window]
        shuffled = np.random.default_rng([seed, 0, epoch, 3, window]).permutation(len(indices))
        picks = [indices[shuffled[(j * rows + r) % len(indices)]] for r in range(process_index, rows, process_count)]
        return self._stack([self.features(self.problem("train", seed, index)) for index in picks])

    def _eval_order(self, seed: int, rows: int) -> list[int]:
        """The eval examples grouped by answer window, each group filled up to whole batches of
        `rows` with -1 (an empty example)."""
        windows = self._windows(seed, "eval", self.eval_examples)
        order = []
        for window in sorted(set(windows)):
            group = [i for i, w in enumerate(windows) if w == window]
            order += group + [-1] * (-len(group) % rows)
        return order

    def _eval_batch(self, seed, order, rows, process_index, process_count, batch) -> dict[str, np.ndarray]:
        indices = order[batch * rows + process_index:(batch + 1) * rows:process_count]
        return self._stack([self.example("eval", seed, i) if i >= 0 else self.empty_example() for i in indices])
