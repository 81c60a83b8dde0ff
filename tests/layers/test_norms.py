import jax
import jax.numpy as jnp
import numpy as np

from sleep_jax.layers import RMSNorm, l2_normalize, rms_normalize
from sleep_jax.axes import logical_axes


def test_rms_normalize_gives_unit_rms():
    x = jax.random.normal(jax.random.key(0), (3, 8)) * 5
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(rms_normalize(x, 1e-6) ** 2, -1)), 1.0, rtol=1e-5)


def test_l2_normalize_gives_unit_norm():
    x = jax.random.normal(jax.random.key(1), (4, 6))
    np.testing.assert_allclose(jnp.linalg.norm(l2_normalize(x), axis=-1), 1.0, rtol=1e-5)


def test_rmsnorm_scale_and_dtype():
    norm = RMSNorm(8, logical_axis="embed", eps=1e-6, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    norm.scale[...] = 2 * jnp.ones(8)
    x = jax.random.normal(jax.random.key(2), (2, 8))
    y = norm(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), 2 * rms_normalize(x, 1e-6), rtol=1e-2)
    assert logical_axes(norm.scale) == ("embed",)
