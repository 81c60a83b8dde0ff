"""GSM-Infinite style problems, checked by re-reading the text: an independent parser and solver
give the answer and the op count; removing any distractor (with whatever refers to it) leaves the
answer unchanged; layout, lengths and evaluator."""
import re

import numpy as np
import pytest

from sleep_jax import tasks
from sleep_jax.tasks import gsm_infinite

from .util import eval_batch, oracle_predictions, write_tiny_tokenizer

# The static word lists (which items are fruits, ...) are the problem's vocabulary, not bookkeeping.
CATEGORY_OF = {item: category for category, items in gsm_infinite.CATEGORIES.items() for item in items}
REF = r"(\w+) has (\w+)( in total)?"
PATTERNS = {
    "literal": re.compile(r"(\w+) has (\d+) (\w+)\."),
    "add": re.compile(rf"(\w+) has (\d+) more (\w+) than {REF}\."),
    "sub": re.compile(rf"(\w+) has (\d+) fewer (\w+) than {REF}\."),
    "mul": re.compile(rf"(\w+) has (\d+) times as many (\w+) as {REF}\."),
    "sum": re.compile(rf"(\w+) has as many (\w+) as {REF} and {REF} combined\."),
    "diff": re.compile(rf"(\w+) has as many (\w+) as {REF} more than {REF}\."),
}
QUESTION = re.compile(r"How many (\w+) does (\w+) have( in total)?\?")


def ref(owner, noun, total):
    return ("total", owner, noun) if total else ("item", owner, noun)


def parse_statement(sentence):
    """(defined (owner, item), kind, constant, refs) of one statement; fails if none matches."""
    for kind, pattern in PATTERNS.items():
        match = pattern.fullmatch(sentence)
        if match is None:
            continue
        g = match.groups()
        if kind == "literal":
            return (g[0], g[2]), kind, int(g[1]), ()
        if kind in ("add", "sub", "mul"):
            return (g[0], g[2]), kind, int(g[1]), (ref(*g[3:6]),)
        return (g[0], g[1]), kind, 0, (ref(*g[2:5]), ref(*g[5:8]))
    raise AssertionError(f"statement matches no template: {sentence!r}")


class Problem:
    """The quantities a problem text defines, solved by recursion over references."""

    def __init__(self, statements):
        self.definitions = {}
        for sentence in statements:
            entity, kind, constant, refs = parse_statement(sentence)
            assert entity not in self.definitions, f"{entity} defined twice"
            assert entity[1] in CATEGORY_OF
            self.definitions[entity] = (kind, constant, refs)

    def members(self, owner, category):
        return [e for e in self.definitions if e[0] == owner and CATEGORY_OF[e[1]] == category]

    def value(self, r, visiting=()):
        kind_of_ref, owner, noun = r
        assert r not in visiting, f"cycle through {r}"
        if kind_of_ref == "total":
            members = self.members(owner, noun)
            assert members, f"empty total {r}"
            return sum(self.value(("item", *m), visiting + (r,)) for m in members)
        kind, constant, refs = self.definitions[(owner, noun)]
        values = [self.value(x, visiting + (r,)) for x in refs]
        result = {"literal": lambda: constant, "add": lambda: values[0] + constant,
                  "sub": lambda: values[0] - constant, "mul": lambda: values[0] * constant,
                  "sum": lambda: values[0] + values[1], "diff": lambda: values[0] - values[1]}[kind]()
        assert 0 <= result <= gsm_infinite.MAX_VALUE
        return result

    def ancestors(self, r):
        """Entities `r` depends on, and its op count (one per derived statement, m - 1 per total)."""
        seen, totals, stack = set(), set(), [r]
        while stack:
            kind_of_ref, owner, noun = stack.pop()
            if kind_of_ref == "total":
                if (owner, noun) not in totals:
                    totals.add((owner, noun))
                    stack += [("item", *m) for m in self.members(owner, noun)]
            elif (owner, noun) not in seen:
                seen.add((owner, noun))
                stack += list(self.definitions[(owner, noun)][2])
        ops = sum(self.definitions[e][0] != "literal" for e in seen)
        return seen, ops + sum(len(self.members(*t)) - 1 for t in totals)


def read_back(task, tokens):
    """Question ref, statements and answer read from the decoded tokens."""
    text = task.vocab.decode(tokens[tokens != task.vocab.pad_id])
    match = re.fullmatch(r"(How many [^\n]*)\n([^\n]*)\nAnswer: (\d+)<eos>", text)
    assert match, text[-200:]
    question, context, answer = match.groups()
    noun, owner, total = QUESTION.fullmatch(question).groups()
    statements = re.findall(r"[^.]+\.", context)
    assert " ".join(s.strip() for s in statements) == context
    return ref(owner, noun, total), [s.strip() for s in statements], int(answer)


def check(task, split, seed, index):
    problem = task.problem(split, seed, index)
    example = task.features(problem)
    question, statements, answer = read_back(task, example["tokens"])
    assert statements == list(problem.statements)
    parsed = Problem(statements)
    assert parsed.value(question) == answer == problem.answer
    needed, ops = parsed.ancestors(question)
    assert ops == problem.ops == int(example["difficulty"][0])
    entity_of = [parse_statement(s)[0] for s in statements]
    distractors = {e for e, is_d in zip(entity_of, problem.is_distractor) if is_d}
    # Every core statement is needed; no distractor is.
    assert needed == set(entity_of) - distractors
    # Without any distractor, and without each distractor and what refers to it: same answer.
    core = [s for s, is_d in zip(statements, problem.is_distractor) if not is_d]
    assert Problem(core).value(question) == answer
    for distractor in distractors:
        kept = [s for s, e in zip(statements, entity_of) if distractor not in parsed.ancestors(("item", *e))[0]]
        assert len(kept) < len(statements)
        assert Problem(kept).value(question) == answer
    return problem, example


@pytest.mark.parametrize("split", ["train", "eval"])
def test_tiny_answers_ops_and_distractors(split):
    task = tasks.make(tasks.default_config("gsm_infinite", "tiny"))
    seen_ops, total_questions = set(), 0
    for index in range(60):
        problem, example = check(task, split, 3, index)
        low, high = task.target_tokens
        assert low <= len(problem.text) <= high
        seen_ops.add(problem.ops)
        total_questions += problem.question.endswith("in total?")
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
    for index in range(40):
        problem = task.problem("train", 11, index)
        core = [s for s, d in zip(problem.statements, problem.is_distractor) if not d]
        uses_total += any("in total" in s for s in core) or problem.question.endswith("in total?")
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


def test_paper_layouts_hard_2000_and_sliding_512():
    """Left padding puts the answer in the last window at any window size."""
    hard = tasks.make(tasks.default_config("gsm_infinite"))
    assert (hard.layout.seq_len, hard.layout.kinds) == (4000, "CP")
    sliding = tasks.make(dict(tasks.default_config("gsm_infinite"), window=512))
    assert (sliding.layout.seq_len, sliding.layout.kinds) == (3584, "CCCCCCP")
    problem, example = check(sliding, "eval", 0, 5)
    assert np.flatnonzero(example["loss_mask"])[0] >= 3584 - 512
    assert example["tokens"][0] == sliding.vocab.pad_id and example["tokens"][-1] == sliding.vocab.eos_id


def test_token_level_lengths_left_padding_and_fixed_train_set(tmp_path):
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
        answer = task.vocab.encode(str(problem.answer)) + [task.vocab.eos_id]
        np.testing.assert_array_equal(example["tokens"][-len(answer):], answer)
        scored = np.flatnonzero(example["loss_mask"])
        assert scored.tolist() == list(range(task.layout.seq_len - len(answer) - 1, task.layout.seq_len - 1))
        text = task.vocab.decode(example["tokens"][example["tokens"] != task.vocab.pad_id])
        assert text.startswith("How many") and text.endswith(f"Answer : {problem.answer} <eos>")
    assert task.train_size == 5
    assert task.problem("train", 0, 7) == task.problem("train", 0, 2)   # epoch 2 repeats epoch 1


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
    batch = eval_batch(task, 4)
    evaluator = task.evaluator()
    evaluator.add(batch, oracle_predictions(batch["tokens"]))
    assert evaluator.result()["by_difficulty"] == {"ops=2": 1.0, "ops=3": 1.0}
    with pytest.raises(ValueError, match="task.eval_examples=40: .* 6 problems of op count 2"):
        tasks.make(dict(config, eval_examples=40))
    (data / "bad.jsonl").write_text(json.dumps({"problem": "x", "question": "y", "op": 1}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:0 has no field 'solution'"):
        tasks.make(config)


def test_distractors_share_people_and_read_core_quantities():
    """As GSM-Infinite's noise: distractors about the core's own people, and distractors computed
    from core quantities (the answer staying unchanged is checked by `check`)."""
    task = tasks.make(tasks.default_config("gsm_infinite", "tiny"))
    about_core_people = reads_core = 0
    for index in range(20):
        problem = task.problem("train", 5, index)
        parsed = [parse_statement(s) for s in problem.statements]
        core = {e for (e, _, _, _), d in zip(parsed, problem.is_distractor) if not d}
        core_people = {owner for owner, _ in core}
        for (entity, _, _, refs), is_distractor in zip(parsed, problem.is_distractor):
            if is_distractor:
                about_core_people += entity[0] in core_people
                reads_core += any(r[0] == "item" and (r[1], r[2]) in core for r in refs)
    assert about_core_people > 0 and reads_core > 10
