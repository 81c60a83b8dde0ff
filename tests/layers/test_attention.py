import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.layers import AttentionMixer
from sleep_jax.layers.attention import AttentionFields, grouped_attention
from sleep_jax.windows import Span, attention_mask


def attend(mixer, x, positions, past=None, past_positions=None, **rule):
    """The mixer's span form over x at positions: (y, this span's keys/values)."""
    y, _, kv = mixer.span(x, None, past, Span(positions, past_positions=past_positions, **rule))
    return y, kv


def test_hard_mask_is_block_diagonal_causal():
    positions = jnp.arange(12)
    mask = np.asarray(attention_mask(positions, positions, window=4, eviction="hard"))
    q, k = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    np.testing.assert_array_equal(mask, (k <= q) & (k // 4 == q // 4))


def test_sliding_mask_never_reaches_back_l_tokens_or_more():
    positions = jnp.arange(20)
    mask = np.asarray(attention_mask(positions, positions, window=6, eviction="sliding"))
    q, k = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    assert not np.any(mask & (q - k >= 6))
    np.testing.assert_array_equal(mask, (k <= q) & (q - k < 6))
    assert mask.sum(axis=1).max() == 6


def test_sliding_mask_with_window_at_least_t_is_full_causal():
    positions = jnp.arange(10)
    full = attention_mask(positions, positions, window=None)
    for window in (10, 16):
        np.testing.assert_array_equal(attention_mask(positions, positions, window=window, eviction="sliding"), full)


def test_negative_positions_are_empty_slots():
    mask = attention_mask(jnp.array([3]), jnp.array([-1, 2, 3, -1]), window=None)
    np.testing.assert_array_equal(mask, [[False, True, True, False]])


def test_mask_rejects_unknown_eviction():
    with pytest.raises(ValueError, match="eviction"):
        attention_mask(jnp.arange(3), jnp.arange(3), window=2, eviction="lru")


def test_gqa_with_gate_and_qk_norm_equals_explicit_softmax():
    mixer = AttentionMixer(16, heads=4, kv_heads=2, head_dim=8, output_gate=True, qk_norm="head", rope_theta=100.0,
                           norm_eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 16))
    positions = jnp.arange(10, 16)  # absolute positions need not start at 0
    y, kv, (q, k, v) = jax.jit(lambda x: (*attend(mixer, x, positions), mixer.project(x, positions)))(x)
    k, v = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(8.0)
    scores = jnp.where(jnp.tril(jnp.ones((6, 6), bool)), scores, -jnp.inf)
    o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    o = o * jax.nn.sigmoid(jnp.einsum("btd,dhk->bthk", x, mixer.w_gate[...]))
    np.testing.assert_allclose(y, jnp.einsum("bthk,hkd->btd", o, mixer.w_o[...]), atol=1e-5)
    assert kv["k"].shape == (2, 6, 2, 8)


def test_past_keys_extend_the_context():
    """Attending to the previous span's keys equals running both spans at once under the same mask."""
    mixer = AttentionMixer(16, heads=2, kv_heads=1, head_dim=8, output_gate=False, qk_norm=None, rope_theta=1e4,
                           norm_eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (1, 8, 16))

    @jax.jit
    def run(x):
        whole, _ = attend(mixer, x, jnp.arange(8), window=4, eviction="sliding")
        _, past = attend(mixer, x[:, :4], jnp.arange(4), window=4, eviction="sliding")
        second, _ = attend(mixer, x[:, 4:], jnp.arange(4, 8), past=past, past_positions=jnp.arange(4), window=4,
                           eviction="sliding")
        return whole, second

    whole, second = run(x)
    np.testing.assert_allclose(second, whole[:, 4:], atol=1e-5)


def test_rejects_bad_head_grouping():
    with pytest.raises(ValueError, match="attn_kv_heads"):
        AttentionFields(attn_heads=3, attn_kv_heads=2, attn_head_dim=8)


@pytest.mark.parametrize("per_row", [False, True])
def test_grouped_attention_is_dot_product_attention(per_row):
    # GQA (6 query heads over 2 key/value heads), retained keys before the span's own (S > T).
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, 5, 6, 8))
    k, v = (jax.random.normal(key, (2, 7, 2, 8)) for key in keys[1:3])
    mask = jax.random.bernoulli(keys[3], 0.6, (2, 5, 7) if per_row else (5, 7)).at[..., 0].set(True)
    expected = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None] if not per_row else mask[:, None],
                                            scale=0.3)
    np.testing.assert_allclose(grouped_attention(q, k, v, mask, scale=0.3), expected, rtol=1e-5, atol=1e-6)
