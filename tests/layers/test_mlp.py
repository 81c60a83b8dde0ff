import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleep_jax.layers import SwiGLU
from sleep_jax.axes import logical_axes


def test_swiglu_formula_and_axes():
    mlp = SwiGLU(8, 16, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 3, 8))
    expected = (jax.nn.silu(x @ mlp.w_gate[...]) * (x @ mlp.w_up[...])) @ mlp.w_down[...]
    np.testing.assert_allclose(mlp(x), expected, atol=1e-5)
    assert logical_axes(mlp.w_down) == ("mlp", "embed")
