import jax.numpy as jnp
import pytest

from sleep_jax.layers.common import dtype_from_name, make_param


def test_make_param_checks_logical_axes():
    assert make_param(jnp.ones((2, 3)), ("vocab", None)).get_metadata()["logical_axes"] == ("vocab", None)
    with pytest.raises(ValueError, match="logical_axes"):
        make_param(jnp.ones((2, 3)), ("vocab",))
    with pytest.raises(ValueError, match="logical axis"):
        make_param(jnp.ones((2,)), ("batch",))


def test_dtype_from_name_names_the_field():
    assert dtype_from_name("bfloat16", "model.dtype") == jnp.bfloat16
    with pytest.raises(ValueError, match="model.dtype"):
        dtype_from_name("int8", "model.dtype")
