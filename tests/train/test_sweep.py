import pytest

from sleep_jax.train.errors import ConfigError
from sleep_jax.train.sweep import commands, parse_grid, split_values


def test_values_split_outside_brackets():
    assert split_values("1,2, 3") == ["1", "2", "3"]
    assert split_values("(0,),(1, 2)") == ["(0,)", "(1, 2)"]
    with pytest.raises(ValueError, match="unbalanced"):
        split_values("(0,")


def test_grid_expands_to_one_command_per_point_and_one_plot_per_t():
    grid = parse_grid(["sleep.passes=1,2", "task.steps=(0,),(1,)"])
    lines = commands("configs/rule110.py:tiny", "runs/r", grid, fixed=["train.steps=50"])
    assert len(lines) == 4 + 2 + 1
    assert lines[0] == ("python -m sleep_jax.main --config=configs/rule110.py:tiny "
                        "--workdir=runs/r/passes=1_steps=0 --config.train.steps=50 "
                        "--config.sleep.passes=1 '--config.task.steps=(0,)'")
    assert lines[4] == ("python -m sleep_jax.plot runs/r/passes=1_steps=0 runs/r/passes=2_steps=0 "
                        "--out=runs/r/steps=0.png")


def test_bad_grid_items_raise():
    with pytest.raises(ValueError, match="expected 'block.key"):
        parse_grid(["passes=1,2"])
    with pytest.raises(ValueError, match="given twice"):
        parse_grid(["sleep.passes=1", "sleep.passes=2"])


def test_keys_joined_by_plus_take_the_same_value():
    grid = parse_grid(["sleep.passes=1,2", "task.steps+task.eval_steps=(1,),(2,)"])
    lines = commands("configs/rule110.py:tiny", "r", grid)
    assert lines[1].endswith("--config.sleep.passes=1 '--config.task.steps=(2,)' "
                             "'--config.task.eval_steps=(2,)'")
    assert "--workdir=r/passes=1_steps=2" in lines[1]
    assert lines[-2] == "python -m sleep_jax.plot r/passes=1_steps=2 r/passes=2_steps=2 --out=r/steps=2.png"
    assert lines[-1].endswith("r/passes=2_steps=1 r/passes=2_steps=2 --out=r/all.png")


def test_a_bad_key_or_value_stops_the_sweep_before_any_command():
    config = "configs/rule110.py:tiny"
    with pytest.raises(ConfigError, match=r"^sleep\.pases: unknown key; the sleep block takes"):
        commands(config, "r", parse_grid(["sleep.pases=1,2"]))
    with pytest.raises(ConfigError, match=r"^train\.nope: unknown key"):
        commands(config, "r", parse_grid(["sleep.passes=1,2"]), fixed=["train.nope=3"])
    with pytest.raises(ConfigError, match=r"--config\.sleep\.passes=two"):
        commands(config, "r", parse_grid(["sleep.passes=1,two"]))
    with pytest.raises(ConfigError, match=r"^--config=configs/nope\.py: no such config file"):
        commands("configs/nope.py", "r", parse_grid(["sleep.passes=1"]))
