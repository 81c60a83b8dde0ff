"""GSM-Infinite style word problems: a computational graph padded with distractors to a target length.

Our own generator in the spirit of Zhou et al. 2025 (no code taken from theirs). A problem is about
people owning items (apples, cats, kites, pencils, ...) from four categories. Each statement
defines one quantity, "Ann has 5 apples." or from others: "Ben has 3 more pears than Ann has
apples.", "... 2 fewer ...", "... 3 times as many ... as ...", "Cal has as many plums as Ann has
apples and Ben has pears combined.", "... as Ann has apples more than Ben has pears." (difference).
A reference can be implicit: "Ben has fruits in total" is the sum of every fruit Ben is said to
have, a dependency the text never spells out.

Op count (difficulty, 1..8): the number of +, -, * the answer needs: one per derived statement it
depends on, plus m - 1 additions for each implicit total over m items (2 <= m <= 4). The core
graph is a chain (each operation uses the previous result, possibly through a total), so every core
statement is needed. Values stay in [0, 99].

Distractors follow GSM-Infinite's unnecessary parameters (`drawUnnecessary` in its
`gsm-infinite/data/realistic/forward_generator.py`): quantities of the same people, core people
included, half of them independent of the core (from literals or earlier independent distractors)
and half computed from any earlier quantity, core ones included. They never join a total the
problem references, and the core never refers to them, so they cannot change the answer. They are added until the problem reaches a length drawn
from `target_tokens`; then all statements are shuffled.

Text (`<eos>` ends the answer; `<pad>` fills the front):

    <pad>...<pad>How many fruits does Ann have in total?\\n<statements, space separated>\\nAnswer: 42<eos>

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

import dataclasses
import json
import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from sleep_jax.tasks import config as config_lib
from sleep_jax.tasks.task import Layout, Task, eval_value, example_rng
from sleep_jax.tasks.vocab import PAD, TokenizerVocab, Vocab

EOS = "<eos>"
ANSWER_PREFIX = "\nAnswer: "
MAX_VALUE = 99     # every quantity, hence every answer, is in [0, MAX_VALUE]
MAX_LITERAL = 20   # stated quantities and +/- constants are in [1, MAX_LITERAL]
MAX_FACTOR = 5     # "k times as many": k in [2, MAX_FACTOR]
CORE_OWNERS = 3    # people in the core graph; every other person is a distractor's
MAX_MEMBERS = 4    # items summed by one implicit total
MAX_OPS = 8
MAX_PUBLISHED_OPS = 50   # the published sets go to 30 ops (medium, hard) and 50 (symbolic)
# The answer line: prefix, at most two digits, <eos>.
ANSWER_TOKENS = len(ANSWER_PREFIX) + len(str(MAX_VALUE)) + 1

OWNERS = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack", "Kim", "Leo",
          "Mia", "Ned", "Olga", "Paul", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Xena",
          "Yuri", "Zoe", "Abe", "Bea", "Cal", "Dee", "Eli", "Fay", "Gus", "Hal", "Ida", "Jon", "Kay",
          "Lou", "Max", "Nia")
CATEGORIES = {
    "fruits": ("apples", "bananas", "cherries", "grapes", "lemons", "mangoes", "oranges", "peaches",
               "pears", "plums"),
    "animals": ("cats", "cows", "dogs", "ducks", "goats", "hens", "horses", "pigs", "rabbits", "sheep"),
    "toys": ("balls", "blocks", "dolls", "drums", "kites", "marbles", "puzzles", "robots", "trains", "yoyos"),
    "supplies": ("clips", "crayons", "erasers", "folders", "markers", "pencils", "pens", "rulers",
                 "stamps", "stickers"),
}
CATEGORY_NAMES = tuple(CATEGORIES)
ITEMS = tuple(item for items in CATEGORIES.values() for item in items)
ITEM_CATEGORY = tuple(c for c, items in enumerate(CATEGORIES.values()) for _ in items)

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

# A quantity is named by a reference: ("item", owner, item) or ("total", owner, category).
Ref = tuple[str, int, int]


def _clause(ref: Ref) -> str:
    kind, owner, what = ref
    if kind == "item":
        return f"{OWNERS[owner]} has {ITEMS[what]}"
    return f"{OWNERS[owner]} has {CATEGORY_NAMES[what]} in total"


def _sentence(kind: str, owner: int, item: int, refs: tuple[Ref, ...] = (), constant: int = 0) -> str:
    """The statement defining (owner, item) by `kind` from `refs` and `constant`."""
    subject, noun = OWNERS[owner], ITEMS[item]
    if kind == "literal":
        return f"{subject} has {constant} {noun}."
    if kind == "add":
        return f"{subject} has {constant} more {noun} than {_clause(refs[0])}."
    if kind == "sub":
        return f"{subject} has {constant} fewer {noun} than {_clause(refs[0])}."
    if kind == "mul":
        return f"{subject} has {constant} times as many {noun} as {_clause(refs[0])}."
    if kind == "sum":
        return f"{subject} has as many {noun} as {_clause(refs[0])} and {_clause(refs[1])} combined."
    if kind == "diff":
        return f"{subject} has as many {noun} as {_clause(refs[0])} more than {_clause(refs[1])}."
    raise ValueError(f"unknown statement kind {kind!r}")


def _question(ref: Ref) -> str:
    kind, owner, what = ref
    if kind == "item":
        return f"How many {ITEMS[what]} does {OWNERS[owner]} have?"
    return f"How many {CATEGORY_NAMES[what]} does {OWNERS[owner]} have in total?"


def _longest_sentence() -> str:
    """The longest statement any problem can hold (longest names, 2-digit numbers)."""
    owner = max(range(len(OWNERS)), key=lambda o: len(OWNERS[o]))
    item = max(range(len(ITEMS)), key=lambda i: len(ITEMS[i]))
    total = ("total", owner, max(range(len(CATEGORY_NAMES)), key=lambda c: len(CATEGORY_NAMES[c])))
    ref = max([("item", owner, item), total], key=lambda r: len(_clause(r)))
    return max((_sentence(kind, owner, item, (ref, ref), MAX_VALUE)
                for kind in ("literal", "add", "sub", "mul", "sum", "diff")), key=len)


LONGEST_SENTENCE = _longest_sentence()
MAX_SENTENCE = len(LONGEST_SENTENCE)
MIN_SENTENCE = min(len(_sentence("literal", owner, item, constant=1))
                   for owner in range(len(OWNERS)) for item in range(len(ITEMS)))
# Longest problem: distractors use at most half of the distractor people's (owner, item) pairs,
# so drawing a new pair stays quick.
MAX_PROBLEM_TOKENS = (len(OWNERS) - CORE_OWNERS) * len(ITEMS) // 2 * (MIN_SENTENCE + 1)
LONGEST_QUESTION = max((_question((kind, owner, what))
                        for kind, names in (("item", ITEMS), ("total", CATEGORY_NAMES))
                        for owner in range(len(OWNERS)) for what in range(len(names))), key=len)


def longest_core(ops: int, length: Callable[[str], int] = len) -> int:
    """An upper bound on the length (by `length`: characters or tokens) of a problem with `ops`
    ops before distractors: the question line and at most 1 + 2 * ops statements (a first
    literal, then per op at most one derived statement and one new literal)."""
    return length(LONGEST_QUESTION) + 1 + (1 + 2 * ops) * (length(LONGEST_SENTENCE) + 1)


@dataclasses.dataclass(frozen=True)
class GsmProblem:
    """One word problem.

    Attributes:
      ops: the op count of the answer.
      question: the question line (without the newline).
      statements: the context statements in text order.
      is_distractor: per statement, True where it is a distractor.
      answer: the integer answer.
    """
    ops: int
    question: str
    statements: tuple[str, ...]
    is_distractor: tuple[bool, ...]
    answer: int

    @property
    def text(self) -> str:
        """Question line and statements: everything before the answer line."""
        return self.question + "\n" + " ".join(self.statements)


class _Graph:
    """Builds one problem's quantities and statements; every value stays in [0, MAX_VALUE]."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        people = rng.permutation(len(OWNERS))
        self.core_owners = people[:CORE_OWNERS].tolist()
        self.distractor_owners = people[CORE_OWNERS:].tolist()
        self.values: dict[tuple[int, int], int] = {}   # (owner, item) -> value
        self.taken: set[tuple[int, int]] = set()       # (owner, item)s defined or about to be
        self.core: list[tuple[int, int]] = []           # core (owner, item)s in creation order
        self.frozen: set[tuple[int, int]] = set()       # (owner, category)s whose total is referenced
        self.statements: list[str] = []
        self.distractors: list[str] = []
        self.independent: list[tuple[int, int]] = []   # distractors that never read the core

    def _pick(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def _new_entity(self, owners: list[int]) -> tuple[int, int]:
        """A new (owner, item), not taken before, whose category's total is not referenced."""
        while True:
            owner = owners[self.rng.integers(len(owners))]
            item = int(self.rng.integers(len(ITEMS)))
            if (owner, item) not in self.taken and (owner, ITEM_CATEGORY[item]) not in self.frozen:
                self.taken.add((owner, item))
                return owner, item

    def _define(self, entity: tuple[int, int], value: int, sentence: str, core: bool) -> None:
        assert 0 <= value <= MAX_VALUE, (sentence, value)
        self.values[entity] = value
        self.taken.add(entity)
        (self.statements if core else self.distractors).append(sentence)
        if core:
            self.core.append(entity)

    def literal(self, entity: tuple[int, int], core: bool, high: int = MAX_LITERAL) -> int:
        value = self._pick(1, high)
        self._define(entity, value, _sentence("literal", *entity, constant=value), core)
        return value

    def _operation(self, entity: tuple[int, int], operand: Ref, value: int, others: list[tuple[int, int]],
                   core: bool) -> None:
        """Defines `entity` by one operation on `operand` (worth `value`). The second operand of a
        sum or difference is one of `others` or, in the core only, a new literal (so a distractor
        is always exactly one statement)."""
        addable = [e for e in others if self.values[e] <= MAX_VALUE - value]
        kinds = (["add"] if value < MAX_VALUE else []) + (["sub"] if value >= 1 else [])
        kinds += ["mul"] if 1 <= value <= MAX_VALUE // 2 else []
        kinds += ["sum"] if value < MAX_VALUE and (core or addable) else []
        kinds += ["diff"] if core or others else []
        kind = kinds[self.rng.integers(len(kinds))]
        if kind == "add":
            constant = self._pick(1, min(MAX_LITERAL, MAX_VALUE - value))
            self._define(entity, value + constant, _sentence(kind, *entity, (operand,), constant), core)
        elif kind == "sub":
            constant = self._pick(1, min(MAX_LITERAL, value))
            self._define(entity, value - constant, _sentence(kind, *entity, (operand,), constant), core)
        elif kind == "mul":
            factor = self._pick(2, min(MAX_FACTOR, MAX_VALUE // value))
            self._define(entity, value * factor, _sentence(kind, *entity, (operand,), factor), core)
        else:
            candidates = addable if kind == "sum" else others
            if candidates and (not core or self.rng.random() < 0.3):
                other = candidates[self.rng.integers(len(candidates))]
            else:
                other = self._new_entity(self.core_owners)
                room = MAX_VALUE - value if kind == "sum" else MAX_VALUE
                self.literal(other, core, high=min(MAX_LITERAL, room))
            second, second_value = ("item", *other), self.values[other]
            if kind == "sum":
                self._define(entity, value + second_value,
                             _sentence(kind, *entity, (operand, second)), core)
            else:
                refs, result = (((operand, second), value - second_value) if value >= second_value
                                else ((second, operand), second_value - value))
                self._define(entity, result, _sentence(kind, *entity, refs), core)

    def _total_members(self, owner: int, category: int) -> list[tuple[int, int]]:
        return [e for e in self.core if e[0] == owner and ITEM_CATEGORY[e[1]] == category]

    def _total(self, head: tuple[int, int], members: int) -> tuple[Ref, int]:
        """Adds literals of head's owner in head's category until `members` of them are defined,
        freezes that total (no later item may join it) and returns its reference and value."""
        owner, category = head[0], ITEM_CATEGORY[head[1]]
        existing = self._total_members(owner, category)
        free = [i for i in range(len(ITEMS))
                if ITEM_CATEGORY[i] == category and (owner, i) not in self.taken]
        new = self.rng.permutation(free)[:members - len(existing)].tolist()
        total = sum(self.values[e] for e in existing)
        for n, item in enumerate(new):
            total += self.literal((owner, item), core=True,
                                  high=min(MAX_LITERAL, MAX_VALUE - total - (len(new) - n - 1)))
        self.frozen.add((owner, category))
        return ("total", owner, category), total

    def _total_sizes(self, head: tuple[int, int], low: int, high: int) -> list[int]:
        """Member counts in [low, high] a total over head's category can have within MAX_VALUE."""
        owner, category = head[0], ITEM_CATEGORY[head[1]]
        existing = self._total_members(owner, category)
        free = sum(1 for i in range(len(ITEMS))
                   if ITEM_CATEGORY[i] == category and (owner, i) not in self.taken)
        room = MAX_VALUE - sum(self.values[e] for e in existing)
        return [m for m in range(max(low, len(existing), 2), min(high, MAX_MEMBERS) + 1)
                if m - len(existing) <= min(free, room)]

    def core_problem(self, ops: int) -> tuple[str, int]:
        """Builds a chain of exactly `ops` operations; returns the question and its answer."""
        head = self._new_entity(self.core_owners)
        self.literal(head, core=True)
        left = ops
        while left:
            # End on an implicit total over m members (m - 1 additions) ...
            if self.rng.random() < 0.2 and self._total_sizes(head, left + 1, left + 1):
                ref, answer = self._total(head, left + 1)
                return _question(ref), answer
            # ... or take one (m members: m - 1 additions, then one operation on the total) ...
            sizes = self._total_sizes(head, 2, left) if left >= 2 else []
            if sizes and self.rng.random() < 0.3:
                members = sizes[self.rng.integers(len(sizes))]
                operand, value = self._total(head, members)
                left -= members
            else:  # ... or one operation on the last result.
                operand, value = ("item", *head), self.values[head]
                left -= 1
            entity = self._new_entity(self.core_owners)
            self._operation(entity, operand, value, [e for e in self.core if e != head], core=True)
            head = entity
        return _question(("item", *head)), self.values[head]

    def distractor(self) -> str:
        """Defines one quantity of any person (core people included), in a category whose total
        the problem does not reference: half the time independent of the core (a literal or from
        an earlier independent distractor), else from any earlier quantity, core ones included,
        as GSM-Infinite draws its unnecessary parameters."""
        entity = self._new_entity(self.core_owners + self.distractor_owners)
        if self.rng.random() < 0.5:
            pool = list(self.independent)
            self.independent.append(entity)
        else:
            pool = list(self.values)
        choice = int(self.rng.integers(len(pool) + 1))
        if choice == len(pool):
            self.literal(entity, core=False)
        else:
            operand = pool[choice]
            self._operation(entity, ("item", *operand), self.values[operand],
                            [e for e in pool if e != operand], core=False)
        return self.distractors[-1]


def generate(rng: np.random.Generator, ops: int, target_length: int,
             length: Callable[[str], int] = len) -> GsmProblem:
    """A problem with `ops` ops, padded with distractors until its text (question line and
    statements) measures at least `target_length` by `length` (characters by default, or a
    tokenizer's token count), or less if the core alone is longer. Statements are measured one
    at a time, each with the space before it, which for a tokenizer is close to, not exactly, the
    count of the joined text."""
    graph = _Graph(rng)
    question, answer = graph.core_problem(ops)
    size = length(question + "\n" + " ".join(graph.statements))
    while size < target_length:
        size += length(" " + graph.distractor())
    statements = graph.statements + graph.distractors
    order = rng.permutation(len(statements)).tolist()
    core = len(graph.statements)
    return GsmProblem(ops=ops, question=question, statements=tuple(statements[i] for i in order),
                      is_distractor=tuple(i >= core for i in order), answer=answer)


def without_last_distractor(problem: GsmProblem) -> GsmProblem:
    """`problem` with its last distractor statement (in text order) removed."""
    last = max(i for i, is_distractor in enumerate(problem.is_distractor) if is_distractor)
    keep = [i for i in range(len(problem.statements)) if i != last]
    return dataclasses.replace(problem, statements=tuple(problem.statements[i] for i in keep),
                               is_distractor=tuple(problem.is_distractor[i] for i in keep))


@dataclasses.dataclass(frozen=True)
class PublishedProblem:
    """One problem of a published GSM-Infinite file: its context and question, op count, answer."""
    ops: int
    text: str
    answer: int
    source: str   # "<file>:<row>"


_ANSWER = re.compile(r"answer\s*:\s*(-?\d+)", re.IGNORECASE)
PUBLISHED_FIELDS = ("problem", "question", "solution", "op")


def read_published(path: str) -> list[PublishedProblem]:
    """Every problem in the published GSM-Infinite files under `path` (a file or a directory,
    searched recursively): `*.parquet` as on the Hugging Face hub (`InfiniAILab/gsm_infinite_*`,
    one `ops_<n>` split per file) or `*.jsonl` as its generator writes them, rows with
    `problem`, `question`, `solution` (ending in "Answer: <n>") and `op`. Files are read in name
    order. ValueError naming the file and row for a missing field or an answer it cannot read."""
    if os.path.isdir(path):
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                       for name in names if name.endswith((".parquet", ".jsonl")))
    else:
        files = [path]
    if not files or not os.path.exists(files[0]):
        raise ValueError(f"task.data={path!r}: no *.parquet or *.jsonl file there")
    problems = []
    for file in files:
        if file.endswith(".parquet"):
            import pyarrow.parquet as pq
            rows = pq.read_table(file).to_pylist()
        else:
            with open(file) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        for index, row in enumerate(rows):
            where = f"{file}:{index}"
            missing = [field for field in PUBLISHED_FIELDS if field not in row]
            if missing:
                raise ValueError(f"task.data={path!r}: row {where} has no field {missing[0]!r}")
            answers = _ANSWER.findall(str(row["solution"]))
            if not answers:
                raise ValueError(f"task.data={path!r}: row {where}: no 'Answer: <integer>' in its solution")
            text = str(row["problem"]).strip() + "\n" + str(row["question"]).strip()
            problems.append(PublishedProblem(ops=int(row["op"]), text=text,
                                             answer=int(answers[-1]), source=where))
    return problems


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
        self.max_sentence = self.length(LONGEST_SENTENCE)
        if high - low <= self.max_sentence:
            raise ValueError(f"task.target_tokens must span more than one statement "
                             f"({self.max_sentence} tokens), got {(low, high)}")
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
        problem = generate(rng, ops, int(rng.integers(low, high - self.max_sentence)), self.length)
        while self.length(problem.text) > high:   # a tokenizer can count the joined text longer
            problem = without_last_distractor(problem)
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
