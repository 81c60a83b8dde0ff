import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_jax.layers import apply_rope


def test_rope_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))

    def score(pq, pk):
        return jnp.sum(apply_rope(q, jnp.array([pq]), 1e4) * apply_rope(k, jnp.array([pk]), 1e4))

    np.testing.assert_allclose(score(7, 3), score(107, 103), rtol=1e-4)
    assert abs(float(score(7, 3)) - float(score(7, 4))) > 1e-4


def test_rope_keeps_norm_and_is_identity_at_zero():
    x = jax.random.normal(jax.random.key(2), (2, 5, 3, 8))
    y = apply_rope(x, jnp.arange(5), 1e4)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-6)


def test_rope_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="even"):
        apply_rope(jnp.ones((1, 2, 1, 5)), jnp.arange(2), 1e4)
