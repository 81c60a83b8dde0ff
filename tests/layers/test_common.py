import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_jax.axes import logical_axes
from sleep_jax.layers.common import dense, dtype_from_name, make_param


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


def test_dense_is_the_einsum_over_the_contracted_axes():
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (2, 3, 5))
    w = jax.random.normal(keys[1], (5, 4, 6))
    np.testing.assert_allclose(dense(x, w), jnp.einsum("btd,dhk->bthk", x, w), rtol=1e-5, atol=1e-5)
    o = jax.random.normal(keys[2], (2, 3, 4, 6))
    w_o = jax.random.normal(keys[3], (4, 6, 5))
    np.testing.assert_allclose(dense(o, w_o, contract=2), jnp.einsum("bthk,hkd->btd", o, w_o), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="dense: the last 1 axes"):
        dense(x, w_o)
