import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from sleep_jax.layers.common import make_param
from sleep_jax.parallel.mesh import make_mesh
from sleep_jax.parallel.rules import batch_divisor, batch_sharding, logical_to_spec, tree_shardings


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def test_rules_map_logical_names_to_mesh_axes(mesh):
    assert logical_to_spec(("embed", "mlp"), (8, 16), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("vocab", "embed"), (6, 8), mesh) == P("tensor", "fsdp")
    assert logical_to_spec(("embed", "heads", "head_dim"), (8, 4, 16), mesh) == P("fsdp", "tensor", None)
    assert logical_to_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"), None)


def test_a_mesh_axis_that_does_not_divide_the_dimension_is_dropped(mesh):
    assert logical_to_spec(("vocab", "embed"), (5, 8), mesh) == P(None, "fsdp")
    assert logical_to_spec(("batch", None), (2, 5), mesh) == P("data", None)
    assert logical_to_spec(("embed",), (3,), mesh) == P(None)


def test_a_mesh_axis_is_used_once_per_array(mesh):
    # heads and kv_heads both map to tensor: only the first dimension gets it.
    assert logical_to_spec(("heads", "kv_heads"), (4, 4), mesh) == P("tensor", None)


def test_bad_logical_axes_raise(mesh):
    with pytest.raises(ValueError, match="has 1 names but the array has shape"):
        logical_to_spec(("embed",), (4, 4), mesh)
    with pytest.raises(ValueError, match="'layers' has no sharding rule"):
        logical_to_spec(("layers",), (4,), mesh)


def test_tree_shardings_follow_variable_metadata_into_optimizer_state(mesh):
    params = nnx.State({"w": make_param(jnp.zeros((8, 16)), ("embed", "mlp")),
                        "b": nnx.Param(jnp.zeros((16,)))})
    opt_state = optax.adam(1e-3).init(params)
    specs = [s.spec for s in jax.tree.leaves(tree_shardings(opt_state, mesh))]
    # count (replicated), mu.b, mu.w, nu.b, nu.w
    assert specs == [P(), P(), P("fsdp", "tensor"), P(), P("fsdp", "tensor")]


def test_batch_sharding_and_divisor(mesh):
    assert batch_sharding(mesh).spec == P(("data", "fsdp"), None)
    assert batch_divisor(mesh) == 4
    single = make_mesh({"data": 1}, jax.devices()[:1])
    assert batch_sharding(single, ndim=3).spec == P(None, None, None)
    assert batch_divisor(single) == 1
