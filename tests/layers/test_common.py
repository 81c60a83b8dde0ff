import jax.numpy as jnp
import pytest

from sleep_jax.axes import logical_axes
from sleep_jax.layers.common import dtype_from_name, make_param


def test_make_param_checks_logical_axes():
    assert logical_axes(make_param(jnp.ones((2, 3)), ("vocab", None))) == ("vocab", None)
    with pytest.raises(ValueError, match="logical_axes"):
        make_param(jnp.ones((2, 3)), ("vocab",))
    with pytest.raises(ValueError, match="logical axis"):
        make_param(jnp.ones((2,)), ("batch",))


def test_dtype_from_name_names_the_field():
    assert dtype_from_name("bfloat16", "model.dtype") == jnp.bfloat16
    with pytest.raises(ValueError, match="model.dtype"):
        dtype_from_name("int8", "model.dtype")


def test_logical_axes_are_flax_sharding_metadata():
    # nnx.get_partition_spec reads the same names, unsharded until the rules place them on a mesh.
    from flax import nnx
    from jax.sharding import PartitionSpec

    param = make_param(jnp.ones((2, 3)), ("embed", "mlp"))
    assert nnx.get_partition_spec(nnx.State({"w": param}))["w"].get_value() == PartitionSpec("embed", "mlp")
    assert param.get_metadata()["eager_sharding"] is False
