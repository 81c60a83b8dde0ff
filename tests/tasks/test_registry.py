"""make / default_config: every task builds from its defaults; bad configs raise naming the key."""
import ml_collections
import pytest

from sleep_jax import tasks


@pytest.mark.parametrize("name", tasks.TASK_NAMES)
@pytest.mark.parametrize("size", tasks.SIZES)
def test_default_configs_build(name, size):
    config = tasks.default_config(name, size)
    assert isinstance(config, ml_collections.ConfigDict) and config.name == name
    task = tasks.make(config)
    assert task.name == name
    assert task.layout.seq_len == task.layout.window * len(task.layout.kinds)
    # A plain mapping with only the name takes the paper defaults.
    assert tasks.make({"name": name}).layout == tasks.make(tasks.default_config(name)).layout


def test_paper_layouts():
    assert (lambda t: (t.seq_len, t.window, t.kinds))(tasks.make({"name": "rule110"}).layout) == (120, 24, "CCCCP")
    assert (lambda t: (t.seq_len, t.window, t.kinds))(tasks.make({"name": "depo"}).layout) == (375, 75, "CCCCP")
    assert (lambda t: (t.seq_len, t.window, t.kinds))(tasks.make({"name": "gsm_infinite"}).layout) == (4000, 2000, "CP")


@pytest.mark.parametrize("config, message", [
    ({}, "task.name is missing"),
    ({"name": "rule111"}, "task.name must be one of"),
    ({"name": "rule110", "bits": 0}, "task.bits must be >= 5, got 0"),
    ({"name": "rule110", "window": 8}, "task.window is not an option of task 'rule110'"),
    ({"name": "rule110", "steps": ()}, "task.steps must be a non-empty tuple of ints"),
    ({"name": "rule110", "eval_steps": (0, 1, 2, 3), "eval_examples": 10}, r"task.eval_examples must be a multiple of 4"),
    ({"name": "depo", "min_nodes": 80}, "task.min_nodes must be <= 75, got 80"),
    ({"name": "depo", "name_count": 50}, "task.name_count must be >= 75, got 50"),
    ({"name": "depo", "eval_hops": (0, 1)}, "task.eval_hops must be >= 1, got 0"),
    ({"name": "depo", "queries": 3, "eval_examples": 3}, "task.eval_examples must be a multiple of 5"),
    ({"name": "depo", "nodes": 8, "min_nodes": 8, "name_count": 8, "window": 3, "queries": 10},
     "task.window=3 gives depo window 11 of kind P 0 scored positions"),
    ({"name": "gsm_infinite", "ops": (0,)}, "task.ops must be >= 1, got 0"),
    ({"name": "gsm_infinite", "ops": (9,)}, "task.ops must be <= 8, got 9"),
    ({"name": "gsm_infinite", "target_tokens": (2000,)}, "task.target_tokens must have 2 items"),
    ({"name": "gsm_infinite", "target_tokens": (2000, 10**6)}, "task.target_tokens must be <= 24024"),
    ({"name": "gsm_infinite", "tokenizer": "/no/such/dir"}, "task.tokenizer='/no/such/dir': no tokenizer.json"),
    ({"name": "gsm_infinite", "data": "/no/such/file.jsonl"}, "task.data='/no/such/file.jsonl': no"),
    ({"name": "gsm_infinite", "target_tokens": (3250, 3300)}, "task.target_tokens must span more than one"),
    ({"name": "gsm_infinite", "window": 256, "target_tokens": (768, 1000)}, r"task.target_tokens\[1\] must be >= 1127"),
])
def test_bad_configs_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        tasks.make(config)


def test_default_config_errors():
    with pytest.raises(ValueError, match="task.name must be one of"):
        tasks.default_config("nope")
    with pytest.raises(ValueError, match="size must be one of"):
        tasks.default_config("depo", "huge")
