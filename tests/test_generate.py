"""What `generate` asks of a run's task: how many tokens an answer takes, whether a prompt is in
the task's format, and the chance level eval.json records."""
import pytest

from sleep_jax.tasks.registry import default_config, make


def shown_prompt(task, end: str) -> str:
    """The text `tasks.show` prints for train example 0, up to and including its first `end`."""
    text = task.describe("train", 0, 0)["text"]
    return text[:text.index(end) + len(end)]


def test_rule110_paper_prompt_to_the_tiny_run_is_named():
    tiny, paper = make(default_config("rule110", "tiny")), make(default_config("rule110"))
    assert tiny.answer_tokens() == 4 and tiny.chance() == 1 / 16
    assert tiny.check_prompt(tiny.vocab.encode(shown_prompt(tiny, "|"))) is None
    mismatch = tiny.check_prompt(tiny.vocab.encode(shown_prompt(paper, "|")))
    assert mismatch == ("97 tokens ending in '|'; this rule110 config reads 33 tokens ending in '|' "
                        "before its answer (its windows would not line up with training)")
    assert "ending in '1'" in tiny.check_prompt(tiny.vocab.encode(shown_prompt(tiny, "|") + "1"))


def test_depo_answers_one_name_and_gsm_stops_at_its_end_token():
    depo = make(default_config("depo", "tiny"))
    example = depo.example("eval", 0, 0)
    first = int((example["answer_id"] >= 0).argmax())
    assert depo.answer_tokens() == 1 and depo.check_prompt(list(example["tokens"][:first + 1])) is None
    assert depo.chance() == pytest.approx(0.245, abs=5e-4)   # configs/depo.py's tiny docstring
    gsm = make(default_config("gsm_infinite", "tiny"))
    assert gsm.answer_tokens() == 3 and gsm.chance() == 1 / 100   # "42<eos>"; answers 0..99
    prompt = gsm.vocab.encode(shown_prompt(gsm, "\nAnswer: "))
    assert gsm.check_prompt(prompt) is None
    assert gsm.check_prompt(prompt[:-1]).endswith("not ending in '\\nAnswer: ', the line before every answer")
    assert gsm.check_prompt(prompt[-300:]).startswith("300 tokens put the answer in window 1; this config trains "
                                                      "answers in windows (3,)")
