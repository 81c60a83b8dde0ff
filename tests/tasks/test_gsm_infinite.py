"""GSM-Infinite problems, checked by re-reading the text: an independent parser and solver give
the answer and the op count (one per input of every parameter the answer needs, the stated
constant included; a total one per kind summed, an offspring total two); removing any distractor
(with whatever refers to it) leaves the answer unchanged; layout, lengths and evaluator."""
import itertools
import os
import re

import numpy as np
import pytest

from sleep_jax import tasks
from sleep_jax.tasks import gsm_infinite
from sleep_jax.windows import kinds_from_mask

from .util import eval_batch, oracle_predictions, write_bpe_tokenizer, write_tiny_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    return write_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


# The static word lists are the problems' vocabulary, not the generator's bookkeeping.
PLACES = {p for t in gsm_infinite.TEMPLATES for p in t.places}
KINDS = {k for t in gsm_infinite.TEMPLATES for k in t.kinds}
KINDS_TOTALS = {t.kinds_total for t in gsm_infinite.TEMPLATES}
OFFSPRING = {t.offspring for t in gsm_infinite.TEMPLATES}


def parse_phrase(text):
    """("count" | "average", place, kind) or ("total" | "offspring", place, None) of a noun phrase."""
    match = re.fullmatch(r"the average number of (.+) per (.+) in (.+)", text)
    if match:
        offspring, kind, place = match.groups()
        assert offspring in OFFSPRING and kind in KINDS and place in PLACES, text
        return ("average", place, kind)
    match = re.fullmatch(r"the total number of (.+) in (.+)", text)
    if match:
        what, place = match.groups()
        assert place in PLACES and what in KINDS_TOTALS | OFFSPRING, text
        return ("total" if what in KINDS_TOTALS else "offspring", place, None)
    match = re.fullmatch(r"the number of (.+) in (.+)", text)
    assert match, f"no parameter phrase: {text!r}"
    kind, place = match.groups()
    assert kind in KINDS and place in PLACES, text
    return ("count", place, kind)


def parse_statement(sentence):
    """(defined ref, constant or None, "plus" | "times" | None, operand refs, "sum" | "difference")."""
    match = re.fullmatch(r"The (.+?) equals (.+)\.", sentence)
    assert match, f"statement matches no form: {sentence!r}"
    ref = parse_phrase("the " + match.group(1))
    assert ref[0] in ("count", "average"), f"a total is stated: {sentence!r}"
    value = match.group(2)
    if re.fullmatch(r"\d+", value):
        return ref, int(value), None, (), "sum"
    constant = apply = None
    match = re.fullmatch(r"(\d+) (plus|times) (.+)", value)
    if match:
        constant, apply, value = int(match.group(1)), match.group(2), match.group(3)
    combine = "sum"
    if value.startswith("the sum of ") and ", and " in value:
        names = value[len("the sum of "):].split(", ")
        assert names[-1].startswith("and ")
        names[-1] = names[-1][len("and "):]
    elif value.startswith("the sum of "):
        names = value[len("the sum of "):].split(" and ")
    elif value.startswith("the difference between "):
        names, combine = value[len("the difference between "):].split(" and "), "difference"
    else:
        names = [value]
    assert 1 <= len(names) <= 4 and (len(names) == 2 or combine == "sum"), sentence
    return ref, constant, apply, tuple(parse_phrase(n) for n in names), combine


def parse_question(question):
    match = re.fullmatch(r"How many (.+) does (.+) have\?", question)
    if match:
        kind, place = match.groups()
        assert kind in KINDS and place in PLACES
        return ("count", place, kind)
    match = re.fullmatch(r"What is (.+)\?", question)
    assert match, question
    return parse_phrase(match.group(1))


class Problem:
    """The quantities a problem text defines, solved by recursion over what each one reads. A
    place's total sums the counts stated for that place; its offspring total sums count times
    average over those kinds."""

    def __init__(self, statements):
        self.definitions = {}
        for sentence in statements:
            ref, *definition = parse_statement(sentence)
            assert ref not in self.definitions, f"{ref} defined twice"
            self.definitions[ref] = definition
        self.cache = {}

    def counts(self, place):
        return [r for r in self.definitions if r[0] == "count" and r[1] == place]

    def inputs(self, ref):
        """What `ref` reads, and how many ops it takes itself."""
        if ref[0] == "total":
            return self.counts(ref[1]), len(self.counts(ref[1]))
        if ref[0] == "offspring":
            counts = self.counts(ref[1])
            return counts + [("average", ref[1], c[2]) for c in counts], 2 * len(counts)
        constant, _, operands, _ = self.definitions[ref]
        return list(operands), len(operands) + (constant is not None)

    def value(self, ref, visiting=()):
        assert ref not in visiting, f"cycle through {ref}"
        if ref in self.cache:
            return self.cache[ref]
        if ref[0] == "total":
            result = sum(self.value(c, visiting + (ref,)) for c in self.counts(ref[1]))
        elif ref[0] == "offspring":
            result = sum(self.value(c, visiting + (ref,)) * self.value(("average", *c[1:]), visiting + (ref,))
                         for c in self.counts(ref[1]))
        else:
            constant, apply, operands, combine = self.definitions[ref]
            values = [self.value(r, visiting + (ref,)) for r in operands]
            inner = (values[0] - values[1] if combine == "difference" else sum(values)) if values else None
            result = {None: lambda: constant if inner is None else inner, "plus": lambda: constant + inner,
                      "times": lambda: constant * inner}[apply]()
        assert 0 <= result <= gsm_infinite.MAX_VALUE, (ref, result)
        self.cache[ref] = result
        return result

    def ancestors(self, ref):
        """Parameters `ref` depends on (itself included) and the op count of computing it."""
        seen, stack, ops = set(), [ref], 0
        while stack:
            r = stack.pop()
            if r not in seen:
                seen.add(r)
                reads, own = self.inputs(r)
                ops += own
                stack += reads
        return seen, ops


def read_back(task, tokens):
    """Question, statements and answer read from the decoded tokens."""
    text = task.vocab.decode(tokens[tokens != task.vocab.pad_id])
    match = re.fullmatch(r"((?:How many|What is) [^\n]*)\n([^\n]*)\nAnswer: (\d+)<eos>", text)
    assert match, text[-200:]
    question, context, answer = match.groups()
    statements = re.findall(r"[^.]+\.", context)
    assert " ".join(s.strip() for s in statements) == context
    return question, [s.strip() for s in statements], int(answer)


def check_problem(problem):
    """The solver's answer and op count from the text equal the problem's; every statement is
    well defined; the answer needs every core statement and no distractor; dropping any
    distractor (and what reads it) or any removable statement leaves the answer unchanged."""
    question = parse_question(problem.question)
    parsed = Problem(problem.statements)
    for ref in parsed.definitions:
        parsed.value(ref)
    assert parsed.value(question) == problem.answer
    needed, ops = parsed.ancestors(question)
    assert ops == problem.ops
    defined = [parse_statement(s)[0] for s in problem.statements]
    distractors = {r for r, d in zip(defined, problem.is_distractor) if d}
    assert {r for r in needed if r in parsed.definitions} == set(defined) - distractors
    core = [s for s, d in zip(problem.statements, problem.is_distractor) if not d]
    assert Problem(core).value(question) == problem.answer
    readers = {r: parsed.ancestors(r)[0] for r in defined}
    for distractor in distractors:
        kept = [s for s, r in zip(problem.statements, defined) if distractor not in readers[r]]
        assert Problem(kept).value(question) == problem.answer
    for ref, removable in zip(defined, problem.removable):
        if removable:
            assert ref in distractors and not any(ref in readers[r] for r in defined if r != ref)
    return parsed, question


def check(task, split, seed, index):
    problem = task.problem(split, seed, index)
    example = task.features(problem)
    question, statements, answer = read_back(task, example["tokens"])
    assert question == problem.question and statements == list(problem.statements) and answer == problem.answer
    assert int(example["difficulty"][0]) == problem.ops
    check_problem(problem)
    return problem, example


def test_solver_counts_ops_as_gsm_infinite_num_op():
    """The solver's op count on a hand-worked text: one per edge into each needed parameter, the
    stated constant included; a total one per kind, an offspring total two per kind."""
    parsed = Problem([
        "The number of adult owl in Elm Park equals 5.",                                      # 1
        "The number of adult fox in Elm Park equals 3 plus the number of adult owl in Elm Park.",  # 2
        "The average number of newborns per adult owl in Elm Park equals 2.",                 # 1
        "The average number of newborns per adult fox in Elm Park equals the difference between "
        "the number of adult fox in Elm Park and the number of adult owl in Elm Park.",       # 2
        "The number of adult bear in Oak Zoo equals 2 times the sum of the number of adult owl in "
        "Elm Park, the number of adult fox in Elm Park, and the total number of adult animals in Elm Park.",
    ])
    elm, oak = "Elm Park", "Oak Zoo"
    assert parsed.ancestors(("count", elm, "adult fox"))[1] == 3
    assert parsed.ancestors(("total", elm, None))[1] == 2 + 1 + 2
    # 2 x 2 for the products and sums, then the four statements below them: 1 + 2 + 1 + 2.
    assert parsed.ancestors(("offspring", elm, None))[1] == 4 + 6
    assert parsed.value(("offspring", elm, None)) == 5 * 2 + 8 * 3
    # 4 inputs (constant and three quantities), the total's 5 ops; the owl and fox counted once.
    assert parsed.ancestors(("count", oak, "adult bear"))[1] == 4 + 5
    assert parsed.value(("count", oak, "adult bear")) == 2 * (5 + 8 + 13)


@pytest.mark.parametrize("ops", range(1, gsm_infinite.MAX_OPS + 1))
def test_solver_reads_answer_and_op_count_for_every_op_count(ops):
    """For each op count, problems of either depth and template, solved from the text alone."""
    rng = np.random.default_rng(ops)
    for _ in range(12):
        check_problem(gsm_infinite.generate(rng, ops, 700))


def test_hierarchy_and_abstract_parameters_appear():
    """Every template; every kind of parameter asked for; counts, averages (level 2) and totals read
    by the answer's statements. (An offspring total costs 4 ops per kind at its place, so within
    8 ops it is mostly the question itself.)"""
    rng = np.random.default_rng(1)
    asked, read, templates = set(), set(), set()
    for index in range(80):
        problem = gsm_infinite.generate(rng, 1 + index % 8, 400)
        question = parse_question(problem.question)
        templates |= {t.name for t in gsm_infinite.TEMPLATES if question[1] in t.places}
        asked.add(question[0])
        for sentence, distractor in zip(problem.statements, problem.is_distractor):
            if not distractor:
                read |= {r[0] for r in parse_statement(sentence)[3]}
    assert asked == {"count", "average", "total", "offspring"}
    assert {"total", "count", "average"} <= read
    assert templates == {"zoo", "school", "festival"}


@pytest.mark.parametrize("split", ["train", "eval"])
def test_tiny_answers_ops_and_distractors(split):
    task = tasks.make(tasks.default_config("gsm_infinite", "tiny"))
    seen_ops, total_questions = set(), 0
    for index in range(60):
        problem, example = check(task, split, 3, index)
        low, high = task.target_tokens
        assert low <= len(problem.text) <= high
        seen_ops.add(problem.ops)
        total_questions += problem.question.startswith("What is the total")
        # The answer lies in the last (prediction) window.
        assert np.flatnonzero(example["loss_mask"])[0] >= task.layout.seq_len - task.layout.window
    assert seen_ops == {1, 2, 3} and total_questions > 0


def test_paper_size_problems():
    task = tasks.make(tasks.default_config("gsm_infinite"))
    ops = []
    for index in range(8):
        problem, example = check(task, "eval", 0, index)
        assert 2000 <= len(problem.text) <= 3300 and sum(problem.is_distractor) > 10
        ops.append(problem.ops)
        assert example["tokens"].shape == (4000,)
    assert ops == list(range(1, 9))


def test_implicit_totals_appear():
    """Some problems depend on a total the text never spells out."""
    task = tasks.make(tasks.default_config("gsm_infinite", "tiny"))
    uses_total = 0
    for index in range(60):
        problem = task.problem("train", 11, index)
        core = [s for s, d in zip(problem.statements, problem.is_distractor) if not d]
        uses_total += any("the total number" in s for s in core) or problem.question.startswith("What is the total")
    assert uses_total >= 5


def test_evaluator_oracle_and_random():
    task = tasks.make(tasks.default_config("gsm_infinite", "tiny"))
    batch = eval_batch(task, 120)
    evaluator = task.evaluator()
    evaluator.add(batch, oracle_predictions(batch["tokens"]))
    result = evaluator.result()
    assert result["accuracy"] == 1.0
    assert result["by_difficulty"] == {"ops=1": 1.0, "ops=2": 1.0, "ops=3": 1.0}
    # Random digits or <eos>: chance is at most 1/121 per answer (>= 1 digit + <eos>).
    symbols = np.array(task.vocab.encode("0123456789") + [task.vocab.eos_id])
    random = np.random.default_rng(0).choice(symbols, batch["tokens"].shape)
    evaluator = task.evaluator()
    evaluator.add(batch, random)
    assert evaluator.result()["accuracy"] < 0.05


def test_paper_layouts_windows_from_the_first_token():
    """Windows are counted from the problem's first token: at L = 2000 every paper-length problem
    is consolidated once and answered in window 1; at L = 512 the answer starts in window 3 to 6
    by the problem's length. No padding is read before the problem; padding follows the answer."""
    hard = tasks.make(tasks.default_config("gsm_infinite"))
    assert (hard.layout.seq_len, hard.layout.kinds, hard.layout.answer_windows) == (4000, "CP", (1,))
    sliding = tasks.make(dict(tasks.default_config("gsm_infinite"), window=512))
    assert (sliding.layout.seq_len, sliding.layout.kinds) == (3584, "CCCCCCP")
    assert sliding.layout.answer_windows == (3, 4, 5, 6)
    for task in (hard, sliding):
        problem, example = check(task, "eval", 0, 5)
        prompt = len(task.vocab.encode(problem.text + "\nAnswer: "))
        scored = np.flatnonzero(example["loss_mask"])
        assert scored[0] == prompt - 1 and scored[0] // task.layout.window == task.answer_window(problem)
        assert example["tokens"][0] != task.vocab.pad_id and example["tokens"][-1] == task.vocab.pad_id
        assert kinds_from_mask(example["loss_mask"][None], task.layout.window) == \
            "C" * task.answer_window(problem) + "P" * (scored[-1] // task.layout.window - scored[0] // task.layout.window + 1)


def test_batches_share_their_answer_window():
    """A batch's rows start their answers in one window (so one kinds string serves it): training
    batches draw a window per batch, the eval set is grouped by window and covered exactly once."""
    task = tasks.make(dict(tasks.default_config("gsm_infinite", "tiny"), window=128, target_tokens=(300, 900),
                           eval_examples=24))
    assert task.layout.answer_windows == (2, 3, 4, 5, 6, 7)
    windows = set()
    for batch in itertools.islice(iter(task.batches("train", 0, 4)), 12):
        kinds = kinds_from_mask(batch["loss_mask"], 128)
        windows.add(kinds.index("P"))
        assert all(kinds_from_mask(row[None], 128).index("P") == kinds.index("P") for row in batch["loss_mask"])
    assert len(windows) >= 3
    two = [next(iter(task.batches("train", 0, 2, process_index=p, process_count=2))) for p in (0, 1)]
    one = next(iter(task.batches("train", 0, 4)))
    np.testing.assert_array_equal(np.concatenate([two[0]["tokens"][:1], two[1]["tokens"][:1], two[0]["tokens"][1:],
                                                  two[1]["tokens"][1:]]), one["tokens"])   # rows p, p + P, ...
    seen = []
    for batch in task.batches("eval", 0, 5):
        kinds_from_mask(batch["loss_mask"], 128)          # raises if two rows start in different windows
        seen += [int(d) for d in batch["difficulty"][:, 0] if d >= 0]
    assert len(seen) == 24 and sorted(seen) == sorted(task.dataset("eval", 0)[i]["difficulty"][0] for i in range(24))


def test_token_level_lengths_and_fixed_train_set(tmp_path):
    tokenizer = write_tiny_tokenizer(tmp_path / "tok")
    config = dict(tasks.default_config("gsm_infinite", "tiny"), tokenizer=tokenizer, window=64,
                  target_tokens=(200, 300), train_examples=5)
    task = tasks.make(config)
    assert task.vocab.size > 200 and task.vocab.decode([task.vocab.eos_id]) == "<eos>"
    assert task.layout.kinds == "C" * (len(task.layout.kinds) - 1) + "P"
    for index in range(6):
        problem = task.problem("eval", 0, index)
        example = task.features(problem)
        assert 200 <= len(task.vocab.encode(problem.text)) <= 300   # tokens, not characters
        prompt = len(task.vocab.encode(problem.text + "\nAnswer: "))
        answer = task.vocab.encode(str(problem.answer)) + [task.vocab.eos_id]
        np.testing.assert_array_equal(example["tokens"][prompt:prompt + len(answer)], answer)
        scored = np.flatnonzero(example["loss_mask"])
        assert scored.tolist() == list(range(prompt - 1, prompt + len(answer) - 1))
        text = task.vocab.decode(example["tokens"][example["tokens"] != task.vocab.pad_id])
        assert text.startswith(("How many", "What is")) and text.endswith(f"Answer : {problem.answer} <eos>")
    assert task.train_size == 5
    assert task.problem("train", 0, 7) == task.problem("train", 0, 2)   # epoch 2 repeats epoch 1
    batches = list(itertools.islice(iter(task.batches("train", 0, 2)), 12))
    for batch in batches:
        kinds_from_mask(batch["loss_mask"], 64)
    texts = {task.vocab.decode(row) for batch in batches for row in batch["tokens"]}
    assert len(texts) == 5   # every problem of the fixed set is read


def published_rows(ops_values, per_ops):
    """Rows in the published layout, each an arithmetic chain of `op` steps."""
    rows = []
    for op in ops_values:
        for i in range(per_ops):
            value, lines = i + 1, [f"Ann has {i + 1} apples."]
            for step in range(op):
                value += 2
                lines.append(f"Ben {step} has 2 more pears than before.")
            rows.append({"problem": " ".join(lines), "question": "How many pears does Ben have?",
                         "solution": f"Steps ... Answer: {value}.", "op": op, "id": i,
                         "template": "crazy_zootopia", "mode": "normalforward", "length": 0, "d": 2})
    return rows


def test_published_parquet_and_jsonl(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    data = tmp_path / "gsm_infinite_medium_0" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(published_rows([2], 6)), data / "ops_2-00000-of-00001.parquet")
    with open(data / "ops_3.jsonl", "w") as f:
        f.write("\n".join(json.dumps(row) for row in published_rows([3], 6)) + "\n")
    config = dict(tasks.default_config("gsm_infinite", "tiny"), data=str(tmp_path), ops=(2, 3),
                  eval_ops=(2, 3), eval_examples=4, window=64, target_tokens=(5, 300))
    task = tasks.make(config)
    assert [p.ops for p in task.eval_problems] == [2, 3, 2, 3] and task.train_size == 8
    assert task.problem("eval", 0, 1).answer == 1 + 2 * 3
    # The question first, then the context, as the generator lays a problem out.
    assert task.problem("eval", 0, 1).text.startswith("How many pears does Ben have?\nAnn has 1 apples.")
    assert task.vocab.decode(task.example("eval", 0, 1)["tokens"][:29]).startswith("How many pears does Ben have?")
    batch = eval_batch(task, 4)
    evaluator = task.evaluator()
    evaluator.add(batch, oracle_predictions(batch["tokens"]))
    assert evaluator.result()["by_difficulty"] == {"ops=2": 1.0, "ops=3": 1.0}
    with pytest.raises(ValueError, match="task.eval_examples=40: .* 6 problems of op count 2"):
        tasks.make(dict(config, eval_examples=40))
    (data / "bad.jsonl").write_text(json.dumps({"problem": "x", "question": "y", "op": 1}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:0 has no field 'solution'"):
        tasks.make(config)


def test_distractors_share_places_and_read_core_quantities():
    """As GSM-Infinite's noise: the structure's other parameters, about the answer's own places,
    and padding about other places that reads the answer's parameters (the answer staying
    unchanged is checked by `check_problem`)."""
    task = tasks.make(tasks.default_config("gsm_infinite", "tiny"))
    about_core_places = reads_core = other_places = 0
    for index in range(20):
        problem = task.problem("train", 5, index)
        parsed = [parse_statement(s) for s in problem.statements]
        core = {p[0] for p, d in zip(parsed, problem.is_distractor) if not d}
        core_places = {ref[1] for ref in core} | {parse_question(problem.question)[1]}
        for (ref, _, _, operands, _), is_distractor in zip(parsed, problem.is_distractor):
            if is_distractor:
                about_core_places += ref[1] in core_places
                other_places += ref[1] not in core_places
                reads_core += any(r in core for r in operands)
    assert about_core_places > 10 and reads_core > 10 and other_places > 10


@pytest.mark.parametrize("variant", ["paper", "paper_sliding"])   # paper_ouro's task block is paper's
def test_paper_recipes_build_their_data_with_a_bpe_tokenizer(variant, bpe_tokenizer):
    """Each paper recipe's task, its lengths counted by a byte-level BPE (about 4 characters a
    token, as Qwen2.5's): every train batch of one epoch of a (smaller) fixed set and every eval
    batch builds, within 2000..3300 tokens, each batch's rows sharing their answer window."""
    import runpy
    recipes = runpy.run_path(os.path.join(REPO, "configs", "gsm_finetune.py"))["get_config"]
    config = recipes(variant)
    assert recipes("paper_ouro").task.to_dict() == recipes("paper").task.to_dict()
    task = tasks.make(dict(config.task.to_dict(), tokenizer=bpe_tokenizer, train_examples=48, eval_examples=16))
    assert config.train.batch_size == 256 and config.task.eval_examples == 1600   # the paper's
    built, windows = 0, set()
    for split, batches in (("train", itertools.islice(iter(task.batches("train", 0, 8)), 8)),
                           ("eval", task.batches("eval", 0, 8))):
        for batch in batches:
            kinds = kinds_from_mask(batch["loss_mask"], task.layout.window)
            windows.add(kinds.index("P"))
            for tokens in batch["tokens"][batch["difficulty"][:, 0] >= 0]:
                text = task.vocab.decode(tokens[tokens != task.vocab.pad_id])
                problem = text[:text.index("\nAnswer:")]
                assert 2000 <= len(task.vocab.encode(problem)) <= 3300
                built += 1
    assert built >= 48 + 16 and windows <= set(task.layout.answer_windows)
    if variant == "paper_sliding":
        assert len(windows) >= 2
