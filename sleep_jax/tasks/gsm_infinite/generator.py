"""The GSM-Infinite problem generator: a hierarchy of quantities, an exact op count, distractors to a target length.

Our own generator after the "realistic" forward generator of GSM-Infinite (Zhou et al. 2025; read
in its `gsm-infinite/data/realistic/forward_generator.py`, `StructureGraphThree.py` and
`DependencyGraph.py`, no code taken), itself a replication of iGSM (Ye et al. 2024).

What we follow:
- Templates with a level hierarchy (`TEMPLATES`, their three: zoos, schools, film festivals):
  places (level 0) hold kinds (level 1: "adult fox", "art school", "comedy film"), each member
  of a kind has offspring (level 2: "newborns", "teachers", "awards"). Each problem draws one
  template, a depth d (2: places and kinds; 3: also offspring) and a structure graph, as their
  `drawStructure`: 2 to 4 places, 2 to 4 kinds, every kind at some place, every place with
  some kind, then random extra edges.
- Instance parameters live on the structure's edges: "the number of adult fox in Elm Park" and,
  for d = 3, "the average number of newborns per adult fox in Elm Park". Each is defined by one
  statement from a constant (their RNG node) and/or up to 4 other quantities: "... equals 7.",
  "... equals X.", "... equals 3 plus|times X.", "... equals the sum of|difference between X and
  Y.", "... equals the sum of X, Y, and Z.", "... equals 3 plus the sum of X and Y." (the
  constant applies to the sum or difference).
- Abstract parameters are never stated, only implied by the hierarchy: "the total number of adult
  animals in Elm Park" sums every kind's count stated for that place (a kind never mentioned
  there is absent), and for d = 3 "the total number of newborns in Elm Park" sums count times
  average over those kinds. A total is over every structure edge at its place, so when the
  answer needs it, all its members are part of the answer's graph.
- Op count, their `num_op`: the number of edges into the parameters the answer depends on, the
  stated constant counting as one (the edge from RNG). So "X equals 7." is 1 op, "X equals 3
  plus Y." is 2, a total over k kinds is k, a total of offspring over k kinds is 2k (one product
  and one addition per kind); ops 1..8. As in their graph, a parameter may read any earlier one
  (a DAG, not a chain) and a statement reads at most 4 inputs.
- Noise as their `drawUnnecessary`: the structure parameters the answer does not need are
  stated in random order while they fit under the target length, half of them independent of the answer's graph (from earlier
  independent ones and a constant), half from anything already computable (the answer's
  parameters, earlier noise, totals whose members are all stated), with 1 to 4 inputs drawn as
  they draw them. They never join a total the answer needs (all its members are core).
- Padding to length as their `dummynetwokinginstanceparam`: parameters of places outside the
  structure (each template has 32 places, the structure at most `MAX_PLACES`), each reading one
  or two of the answer's parameters, sometimes the total of another padding place (whose kinds
  are then closed). Statements are shuffled.

What we leave out, and why: their sampling of the graph by (s, n, m) with retries on failure
(`drawNecessary1..3`; we build the answer's graph top-down with an exact op budget, so every op
count comes out exactly and quickly, from the same family of statements); reverse problems;
answers mod a prime; the solution text (we train on the answer alone, question first); the
prompt's explanation of the totals (a fixed rule the model learns from the data); values up to
1000 (ours stay in [0, 99], so every answer is at most two digits; literals, factors and sums
are drawn to keep them there). Padding statements read at most two quantities (theirs up to
three) so that one fits between `target_tokens` bounds. Padding stays within a guaranteed
capacity: at most a quarter of the padding places close (a closed place loses its unstated
counts), so at least `PADDING_REFS` padding parameters are always free, enough for paper-scale
problems (3300 tokens) even when a padding statement is as short as 16 tokens (one token a word).

`generate(rng, ops, target_length, length)` draws one `GsmProblem`; `length` counts characters or
a tokenizer's tokens (the task's, see `gsm_infinite.task`). Every bound is measured with that
same `length`: `capacity(length)` (the most one padding statement adds, the longest target that
is always reached) and `longest_core(ops, length)`, computed once per `length` object. Their
token counts are exact maxima and minima for a tokenizer that splits at spaces before merging
(byte-level BPE as GPT-2's or Qwen's, word level), otherwise close estimates.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Callable, NamedTuple

import numpy as np

MAX_VALUE = 99     # every quantity, hence every answer, is in [0, MAX_VALUE]
MAX_LITERAL = 20   # stated quantities and "plus" constants are in [1, MAX_LITERAL]
MAX_FACTOR = 5     # "k times": k in [2, MAX_FACTOR]
MAX_INPUTS = 4     # inputs of one statement: its constant and the quantities it reads
MAX_PLACES = 4     # places (and kinds) of a structure graph; the template's other places pad
MAX_OPS = 8


@dataclasses.dataclass(frozen=True)
class Template:
    """A three-level hierarchy: places hold kinds; each member of a kind has offspring.

    Attributes:
      name: the template's name.
      places: level 0 names.
      kinds: level 1 names (singular after "per", as GSM-Infinite writes them).
      kinds_total: what all kinds of a place add up to ("adult animals").
      offspring: level 2, counted per member of a kind ("newborns").
    """
    name: str
    places: tuple[str, ...]
    kinds: tuple[str, ...]
    kinds_total: str
    offspring: str


TEMPLATES = (
    Template("zoo",
             places=("Elm Park", "Oak Zoo", "Fern Vale", "Pine Farm", "Moss Bay", "Ash Grove",
                     "Reed Marsh", "Rock Park", "Cove Zoo", "Glen Farm", "Dale Ranch", "Mist Wood",
                     "Sun Valley", "Hill Ranch", "Lake Farm", "Bay Zoo", "Iris Fen", "Cliff Park",
                     "Rose Vale", "Wind Moor", "Sand Dune", "Tide Pool", "Peak Zoo", "Brook Farm",
                     "Birch Park", "Cedar Zoo", "Maple Farm", "Heath Park", "Lark Zoo", "Marsh Farm",
                     "Stone Vale", "Fir Ranch"),
             kinds=("adult bear", "adult wolf", "adult deer", "adult fox", "adult lynx",
                    "adult hare", "adult otter", "adult eagle", "adult owl", "adult crow",
                    "adult heron", "adult swan", "adult goat", "adult boar"),
             kinds_total="adult animals", offspring="newborns"),
    Template("school",
             places=("Riverton", "Brightford", "Glenfield", "Westhaven", "Evervale", "Oakbridge",
                     "Stonebrook", "Fairmont", "Ashford", "Millbrook", "Redwood", "Silverton",
                     "Kingsport", "Lakeview", "Hillcrest", "Bayside", "Marlow", "Northgate",
                     "Sunford", "Elmstead", "Dunmore", "Harwich", "Pinecrest", "Easton",
                     "Castleton", "Durham", "Greenwich", "Holloway", "Ivybridge", "Kendal",
                     "Lindfield", "Oldham"),
             kinds=("art school", "law school", "high school", "music school", "dance school",
                    "drama school", "chess school", "swim school", "ski school", "film school",
                    "yoga school", "math school", "sport school", "cook school"),
             kinds_total="schools", offspring="teachers"),
    Template("festival",
             places=("Lumen Fest", "Verdi Fest", "Taylor Fest", "North Fest", "Sahara Fest",
                     "Banana Fest", "Valmont Fest", "Rivage Fest", "Aurora Fest", "Coral Fest",
                     "Delta Fest", "Ember Fest", "Falcon Fest", "Harbor Fest", "Indigo Fest",
                     "Jasper Fest", "Kestrel Fest", "Meadow Fest", "Nimbus Fest", "Orchid Fest",
                     "Prism Fest", "Quartz Fest", "Sierra Fest", "Willow Fest", "Lotus Fest",
                     "Cobalt Fest", "Onyx Fest", "Pebble Fest", "Raven Fest", "Summit Fest",
                     "Tulip Fest", "Zephyr Fest"),
             kinds=("comedy film", "drama film", "horror film", "action film", "crime film",
                    "war film", "road movie", "space film", "spy film", "dance film", "heist film",
                    "music film", "sports film", "period film"),
             kinds_total="films", offspring="awards"),
)
# Every word a generated problem can use besides numbers (for word-level tokenizers).
WORDS = tuple(sorted({word for t in TEMPLATES for name in t.places + t.kinds + (t.kinds_total, t.offspring)
                      for word in name.split()}))

# A parameter: (kind, place, what). Instance parameters ("count", p, k) and ("average", p, k)
# name kind k at place p; abstract ones ("total", p, -1) and ("offspring", p, -1) sum over p.
Ref = tuple[str, int, int]
INSTANCE = ("count", "average")


def phrase(template: Template, ref: Ref) -> str:
    """The noun phrase naming `ref`, e.g. "the number of adult fox in Elm Park"."""
    kind, place, what = ref
    where = template.places[place]
    if kind == "count":
        return f"the number of {template.kinds[what]} in {where}"
    if kind == "average":
        return f"the average number of {template.offspring} per {template.kinds[what]} in {where}"
    if kind == "total":
        return f"the total number of {template.kinds_total} in {where}"
    if kind == "offspring":
        return f"the total number of {template.offspring} in {where}"
    raise ValueError(f"unknown parameter kind {kind!r}")


def _statement(subject: str, constant: int | None, apply: str, names: list[str], combine: str) -> str:
    """A statement from its noun phrases: `subject` equals `constant` alone, or `constant`
    `apply` ("plus" | "times" | "" for none) the `combine` ("sum" | "difference") of `names`."""
    if not names:
        value = str(constant)
    else:
        if len(names) == 1:
            value = names[0]
        elif len(names) == 2:
            value = (f"the sum of {names[0]} and {names[1]}" if combine == "sum"
                     else f"the difference between {names[0]} and {names[1]}")
        else:
            value = f"the sum of {', '.join(names[:-1])}, and {names[-1]}"
        if apply:
            value = f"{constant} {apply} {value}"
    return f"{subject[0].upper()}{subject[1:]} equals {value}."


def _question(template: Template, ref: Ref) -> str:
    kind, place, what = ref
    if kind == "count":
        return f"How many {template.kinds[what]} does {template.places[place]} have?"
    return f"What is {phrase(template, ref)}?"


def _all_refs(template: Template) -> list[Ref]:
    places, kinds = range(len(template.places)), range(len(template.kinds))
    return ([(kind, p, k) for kind in INSTANCE for p in places for k in kinds]
            + [(kind, p, -1) for kind in ("total", "offspring") for p in places])


# Padding closes at most a quarter of the padding places (a closed place's unstated counts are
# lost), so at least PADDING_REFS padding parameters are always free: those of the fewest
# padding places (a structure of MAX_PLACES places), counts only (depth 2), less what closures
# lose (each closed place has at least two counts stated). More padding places only add to it.
MAX_CLOSED_SHARE = 4


def _max_closed(padding_places: int) -> int:
    return padding_places // MAX_CLOSED_SHARE


def _padding_refs() -> int:
    places = min(len(t.places) for t in TEMPLATES) - MAX_PLACES
    kinds = min(len(t.kinds) for t in TEMPLATES)
    return places * kinds - _max_closed(places) * (kinds - 2)


PADDING_REFS = _padding_refs()
_CANDIDATES = 4   # phrases per slot (longest or shortest) combined when bounding a statement


class Capacity(NamedTuple):
    """What `generate` can build, measured by one `length` (characters or a tokenizer's tokens).

    Attributes:
      max_padding: the most one padding statement adds to a problem (the space before it
        included): how far the last one may overshoot the target.
      max_problem: the longest target `generate` always reaches: `PADDING_REFS` padding
        statements of the least length one can have.
    """
    max_padding: int
    max_problem: int


@dataclasses.dataclass(frozen=True)
class _Measures:
    capacity: Capacity
    longest_padding: str      # a padding statement of `capacity.max_padding`
    per_input: float          # bound on a core statement's length per input
    question: int             # the longest question


def _padding_forms(subject: str, first: str, second: str) -> list[str]:
    """The padding statements of `subject` from one or two names: the name, their sum, their difference."""
    return [_statement(subject, None, "", [first], "sum"), _statement(subject, None, "", [first, second], "sum"),
            _statement(subject, None, "", [first, second], "difference")]


def _measure(length: Callable[[str], int]) -> _Measures:
    """Every bound by `length`. Each slot of a statement (its subject, each name) is filled by the
    phrases longest (shortest) by `length` in context, and the combinations are measured whole:
    the exact maximum (minimum) for a tokenizer that splits at spaces before merging."""
    refs = [(t, r) for t in TEMPLATES for r in _all_refs(t)]
    names = sorted({(length(" " + phrase(t, r)), phrase(t, r)) for t, r in refs})
    subjects = sorted({(length(" " + phrase(t, r)[0].upper() + phrase(t, r)[1:]), phrase(t, r))
                       for t, r in refs if r[0] in INSTANCE})
    statements = []
    for pick in (slice(-_CANDIDATES, None), slice(_CANDIDATES)):
        slot_subjects, slot_names = [p for _, p in subjects[pick]], [p for _, p in names[pick]]
        statements.append([(length(" " + text), text) for subject in slot_subjects for first in slot_names
                           for second in slot_names for text in _padding_forms(subject, first, second)])
    longest, shortest = max(statements[0]), min(statements[1])
    subject, name = subjects[-1][1], names[-1][1]
    per_input = 0.0
    for inputs in range(1, MAX_INPUTS + 1):
        texts = [_statement(subject, MAX_VALUE, "", [], "sum")] if inputs == 1 else []
        texts += [_statement(subject, MAX_VALUE if constant else None, apply if constant else "",
                             [name] * (inputs - constant), combine)
                  for constant in (0, 1) for apply in ("plus", "times") for combine in ("sum", "difference")
                  if inputs - constant >= 1 and (inputs - constant == 2 or combine == "sum")]
        per_input = max(per_input, max(length(" " + text) for text in texts) / inputs)
    question = max(length(_question(t, r)) for t, r in refs)
    return _Measures(capacity=Capacity(max_padding=longest[0], max_problem=PADDING_REFS * shortest[0]),
                     longest_padding=longest[1], per_input=per_input, question=question)


_MEASURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MEASURES_KEPT: dict = {}   # for `length`s with no weak reference (builtins such as `len`)


def _measures(length: Callable[[str], int]) -> _Measures:
    """`_measure(length)`, computed once per `length` object (a tokenizer's: a few thousand
    phrases measured, a fraction of a second)."""
    try:
        found = _MEASURES.get(length)
        cache = _MEASURES
    except TypeError:
        found = _MEASURES_KEPT.get(length)
        cache = _MEASURES_KEPT
    if found is None:
        found = cache[length] = _measure(length)
    return found


def capacity(length: Callable[[str], int] = len) -> Capacity:
    """`Capacity(max_padding, max_problem)` by `length` (characters, or a tokenizer's tokens)."""
    return _measures(length).capacity


def longest_padding(length: Callable[[str], int] = len) -> int:
    """The most one padding statement adds by `length`: `capacity(length).max_padding`."""
    return capacity(length).max_padding


def max_problem_length(length: Callable[[str], int] = len) -> int:
    """The longest target `generate` always reaches by `length`: `capacity(length).max_problem`."""
    return capacity(length).max_problem


def longest_core(ops: int, length: Callable[[str], int] = len) -> int:
    """An upper bound on the length (by `length`: characters or tokens) of a problem with `ops`
    ops before distractors: the question line and statements whose inputs add up to at most
    `ops`, each no longer per input than the longest statement of its input count."""
    measures = _measures(length)
    return measures.question + 1 + math.ceil(ops * measures.per_input)


# By characters, for callers that measure text in characters (the task did): the longest padding
# statement and the longest target always reached. A tokenizer needs `capacity(length)`.
LONGEST_PADDING = _measures(len).longest_padding
MAX_PROBLEM_TOKENS = capacity(len).max_problem


@dataclasses.dataclass(frozen=True)
class GsmProblem:
    """One word problem.

    Attributes:
      ops: the op count of the answer.
      question: the question line (without the newline).
      statements: the context statements in text order.
      is_distractor: per statement, True where the answer does not depend on it.
      removable: per statement, True where nothing else refers to it (a padding statement that
        no referenced total sums), so dropping it keeps the text well defined.
      answer: the integer answer.
    """
    ops: int
    question: str
    statements: tuple[str, ...]
    is_distractor: tuple[bool, ...]
    removable: tuple[bool, ...]
    answer: int

    @property
    def text(self) -> str:
        """Question line and statements: everything before the answer line."""
        return self.question + "\n" + " ".join(self.statements)


class _Retry(Exception):
    """The random choices so far cannot finish the answer's graph within the value range."""


class _Builder:
    """One problem's structure graph, parameters and statements; every value in [0, MAX_VALUE]."""

    def __init__(self, rng: np.random.Generator, ops: int):
        self.rng = rng
        self.template = TEMPLATES[rng.integers(len(TEMPLATES))]
        self.depth = 2 + int(rng.integers(2))
        self._draw_structure(ops)
        self.values: dict[Ref, int] = {}   # defined parameters, abstract ones included
        self.busy: set[Ref] = set()          # parameters whose definition is under way
        self.core: list[str] = []            # statements the answer depends on
        self.core_refs: list[Ref] = []       # the answer's parameters, abstract ones included
        self.independent: list[Ref] = []     # noise that never reads the answer's graph
        self.closed: set[int] = set()        # padding places whose total is referenced
        self.free: list[Ref] | None = None   # padding parameters not yet stated (from the first padding)
        self.padding_counts: dict[int, list[int]] = {}   # values of the counts stated per padding place

    def _pick(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def _draw_structure(self, ops: int) -> None:
        """Places and kinds (2..MAX_PLACES each) joined by edges, at least `ops` instance
        parameters in all, every kind at some place and every place with some kind."""
        rng, template = self.rng, self.template
        while True:
            places, kinds = self._pick(2, MAX_PLACES), self._pick(2, MAX_PLACES)
            wanted = self._pick(max(places, kinds), places * kinds)
            if wanted * (self.depth - 1) >= ops:
                break
        self.places = sorted(rng.choice(len(template.places), places, replace=False).tolist())
        kind_ids = rng.choice(len(template.kinds), kinds, replace=False).tolist()
        edges = {(self.places[rng.integers(places)], k) for k in kind_ids}
        edges |= {(p, kind_ids[rng.integers(kinds)]) for p in self.places if all(e[0] != p for e in edges)}
        while len(edges) < wanted:
            edges.add((self.places[rng.integers(places)], kind_ids[rng.integers(kinds)]))
        self.edges = sorted(edges)
        self.instances = [(kind, p, k) for kind in INSTANCE[:self.depth - 1] for p, k in self.edges]
        self.totals = [(kind, p, -1) for kind in ("total", "offspring")[:self.depth - 1] for p in self.places]
        self.padding_places = [p for p in range(len(template.places)) if p not in self.places]

    # Abstract parameters.
    def _members(self, total: Ref) -> list[Ref]:
        """The instance parameters a total sums: over the structure's edges at its place."""
        kind, place, _ = total
        kinds = [k for p, k in self.edges if p == place]
        return [("count", place, k) for k in kinds] + ([("average", place, k) for k in kinds]
                                                       if kind == "offspring" else [])

    def _inputs_of_total(self, total: Ref) -> int:
        """Op count of a total itself: one per count summed, two (product, sum) per kind for offspring."""
        return len(self._members(total))

    def _total_value(self, total: Ref) -> int:
        kind, place, _ = total
        counts = [m for m in self._members(total) if m[0] == "count"]
        if kind == "total":
            return sum(self.values[c] for c in counts)
        return sum(self.values[c] * self.values[("average", place, c[2])] for c in counts)

    def _total_options(self, share: int, cap: int) -> list[Ref]:
        """Totals not yet defined that can cost exactly `share` ops within `cap`."""
        options = []
        for total in self.totals:
            members = self._members(total)
            if total in self.values or total in self.busy or any(m in self.busy for m in members):
                continue
            open_members = [m for m in members if m not in self.values]
            cost = self._inputs_of_total(total) + len(open_members)
            fits = share == cost if not open_members else share >= cost
            if fits and self._known_part(total) + len(open_members) <= cap:
                options.append(total)
        return options

    def _known_part(self, total: Ref) -> int:
        """What a total's already-defined members contribute."""
        kind, place, _ = total
        counts = [m for m in self._members(total) if m[0] == "count" and m in self.values]
        if kind == "total":
            return sum(self.values[c] for c in counts)
        averages = [("average", place, c[2]) for c in counts]
        return sum(self.values[c] * self.values[a] for c, a in zip(counts, averages) if a in self.values)

    def _define_total(self, total: Ref, share: int, cap: int) -> None:
        """Defines every open member of `total` so that the total costs `share` ops in all and
        stays within `cap`; the total itself is implied, never stated."""
        kind, place, _ = total
        members = self._members(total)
        open_members = [m for m in members if m not in self.values]
        self.busy |= {total, *open_members}
        shares = dict(zip(open_members, self._split(share - self._inputs_of_total(total), len(open_members))))
        counts = [m for m in members if m[0] == "count"]
        if kind == "total":
            room = cap - self._known_part(total)
            for member in open_members:
                self._define_instance(member, shares[member], room // len(open_members))
        else:
            pairs = [(c, ("average", place, c[2])) for c in counts]
            open_pairs = [(c, a) for c, a in pairs if c in shares or a in shares]
            room = (cap - self._known_part(total)) // max(len(open_pairs), 1)
            if room < 1 and open_pairs:
                raise _Retry
            for count, average in open_pairs:
                if count in shares:
                    known = self.values.get(average)
                    count_cap = math.isqrt(room) if known is None else room // known if known else MAX_VALUE
                    self._define_instance(count, shares[count], count_cap)
                if average in shares:
                    self._define_instance(average, shares[average],
                                          room // self.values[count] if self.values[count] else MAX_VALUE)
        value = self._total_value(total)
        assert value <= cap, (total, value, cap)
        self.values[total] = value
        self.core_refs.append(total)
        self.busy -= {total}

    def _split(self, total: int, parts: int) -> list[int]:
        """`total` as `parts` positive integers, uniformly among compositions."""
        if parts == 0:
            assert total == 0
            return []
        cuts = sorted(self.rng.choice(np.arange(1, total), parts - 1, replace=False).tolist())
        return [b - a for a, b in zip([0] + cuts, cuts + [total])]

    # Instance parameters of the answer's graph.
    def _fresh(self) -> list[Ref]:
        return [r for r in self.instances if r not in self.values and r not in self.busy]

    def _define_instance(self, ref: Ref, budget: int, cap: int) -> None:
        """Defines `ref` by one statement whose graph (its inputs and, recursively, theirs not
        defined before) costs exactly `budget` ops, with a value in [0, cap]."""
        if cap < 1:
            raise _Retry
        self.busy.add(ref)
        options = []
        for constant in (0, 1):
            for n in range(1 - constant, MAX_INPUTS - constant + 1):
                rest = budget - n - constant
                if rest < 0 or (n == 0 and rest) or (constant and n and cap < 2):
                    continue
                child_cap = self._child_cap(cap, constant, n)
                reusable = sum(v <= child_cap for v in self.values.values())
                for new in ([0] if rest == 0 else range(1, min(n, rest) + 1)):
                    if reusable >= n - new and (new == 0 or child_cap >= 1):
                        options.append((constant, n, new, rest))
        if not options:
            raise _Retry
        constant, n, new, rest = options[self.rng.integers(len(options))]
        child_cap = self._child_cap(cap, constant, n)
        reusable = [r for r, v in self.values.items() if v <= child_cap]
        operands = [reusable[i] for i in self.rng.choice(len(reusable), n - new, replace=False)]
        for share in self._split(rest, new):
            totals = self._total_options(share, child_cap)
            if totals and self.rng.random() < 0.5:
                operand = totals[self.rng.integers(len(totals))]
                self._define_total(operand, share, child_cap)
            else:
                fresh = self._fresh()
                if not fresh:
                    raise _Retry
                operand = fresh[self.rng.integers(len(fresh))]
                self._define_instance(operand, share, child_cap)
            operands.append(operand)
        operands = [operands[i] for i in self.rng.permutation(len(operands))]
        sentence, inputs = self._state(ref, bool(constant), operands, cap)
        assert inputs == n + constant, (ref, inputs, n, constant)
        self.core.append(sentence)
        self.core_refs.append(ref)
        self.busy.discard(ref)

    @staticmethod
    def _child_cap(cap: int, constant: int, n: int) -> int:
        """The bound on each operand that keeps any outcome within `cap`: a constant takes at
        least one; two operands fall back to their difference; more are summed."""
        limit = cap - constant
        return limit if n <= 2 else limit // n

    def _state(self, ref: Ref, constant: bool, operands: list[Ref], cap: int) -> tuple[str, int]:
        """Sets `ref`'s value from a constant and/or `operands` within [0, cap]; returns its
        statement and its input count. Where a form would leave the range it falls back, as
        only distractors need: more than two operands to the first two, a sum of two to their
        difference, then the constant dropped."""
        values = [self.values[r] for r in operands]
        limit = cap - 1 if constant else cap
        if len(values) > 2 and sum(values) > limit:
            operands, values = operands[:2], values[:2]
        combine = "sum"
        if not values:
            inner = None
        elif len(values) == 1:
            inner = values[0]
        elif len(values) == 2 and (values[0] + values[1] > limit or self.rng.random() < 0.5):
            combine = "difference"
            if values[0] < values[1]:
                operands, values = operands[::-1], values[::-1]
            inner = values[0] - values[1]
        else:
            inner = sum(values)
        apply, number = "", None
        if constant and inner is None:
            number = value = self._pick(1, min(MAX_LITERAL, cap))
        elif constant and inner < cap:
            apply = "times" if 2 * inner <= cap and self.rng.random() < 0.5 else "plus"
            if apply == "plus":
                number = self._pick(1, min(MAX_LITERAL, cap - inner))
                value = inner + number
            else:
                number = self._pick(2, min(MAX_FACTOR, cap // inner) if inner else MAX_FACTOR)
                value = inner * number
        else:
            value = inner
        assert 0 <= value <= cap, (ref, value, cap)
        self.values[ref] = value
        inputs = len(operands) + (number is not None)
        names = [phrase(self.template, r) for r in operands]
        return _statement(phrase(self.template, ref), number, apply, names, combine), inputs

    def build_core(self, ops: int) -> Ref:
        """The answer's graph with exactly `ops` ops; returns the parameter asked for."""
        totals = self._total_options(ops, MAX_VALUE)
        if totals and self.rng.random() < 0.6:
            root = totals[self.rng.integers(len(totals))]
            self._define_total(root, ops, MAX_VALUE)
        else:
            fresh = self._fresh()
            root = fresh[self.rng.integers(len(fresh))]
            self._define_instance(root, ops, MAX_VALUE)
        return root

    # Distractors.
    def noise(self) -> str | None:
        """States one structure parameter the answer does not need (None when all are stated):
        half the time from earlier independent noise, else from anything computable so far."""
        fresh = self._fresh()
        if not fresh:
            return None
        ref = fresh[self.rng.integers(len(fresh))]
        if self.rng.random() < 0.5:
            pool = list(self.independent)
            self.independent.append(ref)
        else:
            pool = list(self.values)
            for total in self.totals:   # totals whose members are all stated, within range
                if (total not in self.values and all(m in self.values for m in self._members(total))
                        and self._total_value(total) <= MAX_VALUE):
                    self.values[total] = self._total_value(total)
                    pool.append(total)
        inputs = 1
        while inputs < min(MAX_INPUTS, len(pool) + 1) and self.rng.random() < 0.5:
            inputs += 1
        if inputs == len(pool) + 1:
            constant, operands = True, pool
        else:
            constant = bool(self.rng.random() < 0.5)
            operands = [pool[i] for i in self.rng.choice(len(pool), inputs - constant, replace=False)]
        return self._state(ref, constant, operands, MAX_VALUE)[0]

    def padding(self) -> tuple[Ref, str]:
        """A parameter of a place outside the structure read from one or two of the answer's
        parameters, or from one and the total of another padding place (which closes it; at most
        a quarter of the padding places close)."""
        ref = self._padding_ref()
        count = 1 + int(self.rng.random() < 0.5)
        picks = self.rng.choice(len(self.core_refs), min(count, len(self.core_refs)), replace=False)
        operands = [self.core_refs[i] for i in picks]
        if self.rng.random() < 0.2 and len(self.closed) < _max_closed(len(self.padding_places)):
            places = [p for p, values in self.padding_counts.items()
                      if p != ref[1] and p not in self.closed and len(values) >= 2 and sum(values) <= MAX_VALUE]
            if places:
                place = places[self.rng.integers(len(places))]
                self.closed.add(place)
                self.values[("total", place, -1)] = sum(self.padding_counts[place])
                operands[-1] = ("total", place, -1)
                self.free = [r for r in self.free if not (r[0] == "count" and r[1] == place)]
        sentence = self._state(ref, False, operands, MAX_VALUE)[0]
        if ref[0] == "count":
            self.padding_counts.setdefault(ref[1], []).append(self.values[ref])
        return ref, sentence

    def _padding_ref(self) -> Ref:
        """A padding parameter drawn uniformly among those not yet stated (no count of a closed place)."""
        if self.free is None:
            self.free = [(kind, p, k) for kind in INSTANCE[:self.depth - 1] for p in self.padding_places
                         for k in range(len(self.template.kinds))]
        if not self.free:
            raise RuntimeError("gsm_infinite: no padding parameter left; lower task.target_tokens")
        index = int(self.rng.integers(len(self.free)))
        ref, self.free[index] = self.free[index], self.free[-1]
        self.free.pop()
        return ref


def generate(rng: np.random.Generator, ops: int, target_length: int,
             length: Callable[[str], int] = len) -> GsmProblem:
    """A problem with `ops` ops whose text (question line and statements) measures at least
    `target_length` by `length` (characters by default, or a tokenizer's token count), or less
    if the core alone is longer: the answer's statements, then structure noise while it fits
    under the target, then padding until the target is reached. Statements are measured one at
    a time, each with the space before it, which for a tokenizer is close to, not exactly, the
    count of the joined text."""
    for _ in range(100):
        builder = _Builder(rng, ops)
        try:
            root = builder.build_core(ops)
            break
        except _Retry:
            continue
    else:
        raise RuntimeError(f"gsm_infinite: no problem with ops={ops} after 100 tries")
    question = _question(builder.template, root)
    size = length(question + "\n" + " ".join(builder.core))
    noise: list[str] = []
    while size < target_length:
        sentence = builder.noise()
        if sentence is None or size + length(" " + sentence) > target_length:
            break   # the rest of the structure stays unmentioned: nothing stated reads it
        noise.append(sentence)
        size += length(" " + sentence)
    padding: list[tuple[Ref, str]] = []
    while size < target_length:
        padding.append(builder.padding())
        size += length(" " + padding[-1][1])
    statements = builder.core + noise + [sentence for _, sentence in padding]
    # Padding counts of a closed place are summed by a referenced total; the rest is read by nothing.
    removable = [False] * (len(builder.core) + len(noise)) + [
        not (ref[0] == "count" and ref[1] in builder.closed) for ref, _ in padding]
    order = rng.permutation(len(statements)).tolist()
    core = len(builder.core)
    return GsmProblem(ops=ops, question=question, statements=tuple(statements[i] for i in order),
                      is_distractor=tuple(i >= core for i in order),
                      removable=tuple(removable[i] for i in order), answer=builder.values[root])


def without_last_removable(problem: GsmProblem) -> GsmProblem:
    """`problem` without its last removable statement (in text order)."""
    removable = [i for i, r in enumerate(problem.removable) if r]
    if not removable:
        raise ValueError("gsm_infinite: no removable statement left to shorten the problem")
    keep = [i for i in range(len(problem.statements)) if i != removable[-1]]
    return dataclasses.replace(problem, statements=tuple(problem.statements[i] for i in keep),
                               is_distractor=tuple(problem.is_distractor[i] for i in keep),
                               removable=tuple(problem.removable[i] for i in keep))
