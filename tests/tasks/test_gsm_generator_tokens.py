"""GSM-Infinite generator lengths counted in a real tokenizer's tokens: a byte-level BPE (as GPT-2's
or Qwen's) trained here on English text, about 4 characters per token on generated problems.
Paper-scale problems (2000..3300 tokens, ops 1..8) are always built, within their bounds, their
answer and op count those of the core alone; the capacity bounds hold for that tokenizer, a word
level one (one token a word: the shortest padding statements) and characters."""
import pathlib
import time

import numpy as np
import pytest

from sleep_jax.tasks.gsm_infinite import generator

from .test_gsm_infinite import Problem, parse_question
from .util import write_bpe_tokenizer, write_tiny_tokenizer

LOW, HIGH = 2000, 3300          # the paper's problem lengths, in tokens
PROBLEMS = 200


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """(length, directory): a byte-level BPE of 16k tokens (`util.write_bpe_tokenizer`)."""
    from tokenizers import Tokenizer

    path = write_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))
    tokenizer = Tokenizer.from_file(str(pathlib.Path(path) / "tokenizer.json"))
    return (lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)), path


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    """A word-level tokenizer's length: one token a word or punctuation mark."""
    from tokenizers import Tokenizer

    path = write_tiny_tokenizer(tmp_path_factory.mktemp("words"))
    tokenizer = Tokenizer.from_file(str(pathlib.Path(path) / "tokenizer.json"))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def generated(rng, ops, low, high, length):
    """As the task's `_generated`: a target in [low, high - max_padding), then the last removable
    statement dropped while the joined text is longer than `high`."""
    max_padding = generator.capacity(length).max_padding
    problem = generator.generate(rng, ops, int(rng.integers(low, max(low + 1, high - max_padding))), length)
    while length(problem.text) > high:
        problem = generator.without_last_removable(problem)
    return problem


def check_lengths_and_answer(problem, ops, length, low, high):
    """Within [low, high] by `length`; every statement within the padding and core bounds; the
    answer and op count read from the whole text equal the problem's and the core's alone."""
    assert low <= length(problem.text) <= high
    assert problem.ops == ops
    question = parse_question(problem.question)
    parsed = Problem(problem.statements)
    assert parsed.value(question) == problem.answer
    assert parsed.ancestors(question)[1] == ops
    core = [s for s, d in zip(problem.statements, problem.is_distractor) if not d]
    assert Problem(core).value(question) == problem.answer
    assert length(problem.question + "\n" + " ".join(core)) <= generator.longest_core(ops, length)
    return core


def test_bpe_ratio_and_paper_scale_problems(bpe):
    """200 problems of 2000..3300 BPE tokens, ops 1..8: no error, each within bounds after the
    task's trimming, padding never changing the answer or the op count."""
    length, _ = bpe
    capacity = generator.capacity(length)
    rng = np.random.default_rng(2024)
    start = time.perf_counter()
    problems = [(1 + i % generator.MAX_OPS, generated(rng, 1 + i % generator.MAX_OPS, LOW, HIGH, length))
                for i in range(PROBLEMS)]
    seconds = time.perf_counter() - start
    characters = sum(len(p.text) for _, p in problems)
    tokens = sum(length(p.text) for _, p in problems)
    ratio = characters / tokens
    shortest = capacity.max_problem / generator.PADDING_REFS
    statements = []
    for ops, problem in problems:
        core = check_lengths_and_answer(problem, ops, length, LOW, HIGH)
        # Padding's forms: no constant, one or two names (structure noise may have these too).
        statements += [s for s in problem.statements
                       if s not in core and not any(c.isdigit() for c in s) and ", and " not in s]
    sizes = [length(" " + s) for s in statements]
    print(f"\nBPE: {ratio:.2f} characters per token; {PROBLEMS} problems of {LOW}..{HIGH} tokens in "
          f"{seconds:.1f} s; capacity {capacity}; padding-form statements {min(sizes)}..{max(sizes)} tokens")
    assert 3.3 <= ratio <= 4.7
    assert shortest <= min(sizes) and max(sizes) <= capacity.max_padding


def test_capacity_covers_paper_scale(bpe, words):
    """The longest target always reached: >= 3300 tokens for the BPE and for one token a word,
    >= 1300 characters; one padding statement fits the tiny config's 768..1000 characters."""
    bpe_length, _ = bpe
    for length in (bpe_length, words):
        capacity = generator.capacity(length)
        assert capacity.max_problem >= HIGH and 0 < capacity.max_padding < (HIGH - LOW) // 10
        assert generator.longest_padding(length) == capacity.max_padding
        assert generator.max_problem_length(length) == capacity.max_problem
        assert generator.longest_core(generator.MAX_OPS, length) < LOW
    characters = generator.capacity(len)
    assert characters.max_problem >= 1300 and characters.max_padding < 1000 - 768
    assert generator.capacity() == characters == (len(" " + generator.LONGEST_PADDING),
                                                  generator.MAX_PROBLEM_TOKENS)
    print(f"\ncapacity: BPE {generator.capacity(bpe_length)}, words {generator.capacity(words)}, "
          f"characters {characters}; {generator.PADDING_REFS} padding parameters always free")


def test_one_token_a_word_paper_scale(words):
    """The shortest padding statements in tokens (a word-level tokenizer) still reach 3300."""
    rng = np.random.default_rng(7)
    for index in range(40):
        ops = 1 + index % generator.MAX_OPS
        check_lengths_and_answer(generated(rng, ops, HIGH - 300, HIGH, words), ops, words, HIGH - 300, HIGH)


def test_longest_targets_in_characters():
    """Targets up to the character capacity's bound for tiny runs, and far beyond 1300."""
    rng = np.random.default_rng(3)
    for index in range(24):
        ops = 1 + index % generator.MAX_OPS
        check_lengths_and_answer(generated(rng, ops, 12_000, 13_000, len), ops, len, 12_000, 13_000)


def test_generate_is_a_function_of_its_arguments(bpe):
    length, _ = bpe
    first = generator.generate(np.random.default_rng(5), 6, 3000, length)
    again = generator.generate(np.random.default_rng(5), 6, 3000, length)
    assert first == again and length(first.text) >= 3000
