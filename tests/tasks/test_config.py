"""Config helpers: merging over defaults and integer checks, with errors naming task.<key>."""
import ml_collections
import numpy as np
import pytest

from sleep_jax.tasks import config as config_lib


def test_merge_and_unknown_key():
    defaults = {"bits": 24, "steps": (1,)}
    assert config_lib.merge("rule110", {"bits": 8}, defaults) == {"bits": 8, "steps": (1,)}
    with pytest.raises(ValueError, match="task.bitz is not an option of task 'rule110'; known: bits, steps"):
        config_lib.merge("rule110", {"bitz": 8}, defaults)


def test_to_dict():
    assert config_lib.to_dict(ml_collections.ConfigDict({"a": 1})) == {"a": 1}
    with pytest.raises(ValueError, match="mapping or ConfigDict"):
        config_lib.to_dict([("a", 1)])


def test_int_value():
    assert config_lib.int_value({"k": np.int64(3)}, "k", low=1, high=3) == 3
    with pytest.raises(ValueError, match="task.k must be >= 5, got 0"):
        config_lib.int_value({"k": 0}, "k", low=5)
    with pytest.raises(ValueError, match="task.k must be <= 2, got 3"):
        config_lib.int_value({"k": 3}, "k", high=2)
    for bad in (True, 2.0, "2", None):
        with pytest.raises(ValueError, match="task.k must be an int"):
            config_lib.int_value({"k": bad}, "k")


def test_int_tuple():
    assert config_lib.int_tuple({"k": [1, 2]}, "k", low=0) == (1, 2)
    with pytest.raises(ValueError, match="task.k must be >= 0, got -1"):
        config_lib.int_tuple({"k": (1, -1)}, "k", low=0)
    for bad in ((), 3, (1.5,), ("a",)):
        with pytest.raises(ValueError, match="task.k must be a non-empty tuple of ints"):
            config_lib.int_tuple({"k": bad}, "k")
    with pytest.raises(ValueError, match="task.k must have 2 items"):
        config_lib.int_tuple({"k": (1, 2, 3)}, "k", length=2)


def test_multiple_of():
    config_lib.multiple_of("n", 12, 4, "why")
    with pytest.raises(ValueError, match=r"task.n must be a multiple of 5 \(why\), got 12"):
        config_lib.multiple_of("n", 12, 5, "why")
