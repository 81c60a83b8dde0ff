import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.layers import GDNMixer, causal_depthwise_conv
from sleep_jax.axes import logical_axes
from sleep_jax.layers.gdn import GDNFields


def mixer(**overrides):
    fields = dict(heads=1, v_heads=2, head_dim=8, v_head_dim=4, conv_kernel=4, norm_eps=1e-6, impl="recurrent",
                  chunk_size=16, dtype=jnp.float32, param_dtype=jnp.float32)
    return GDNMixer(16, **{**fields, **overrides}, rngs=nnx.Rngs(0))


def test_causal_conv_matches_a_direct_loop_and_keeps_its_tail():
    x = jax.random.normal(jax.random.key(0), (2, 7, 3))
    w = jax.random.normal(jax.random.key(1), (4, 3))
    tail = jax.random.normal(jax.random.key(2), (2, 3, 3))
    y, new_tail = causal_depthwise_conv(x, w, tail)
    padded = np.concatenate([tail, x], axis=1)
    expected = np.stack([sum(padded[:, t + j] * w[j] for j in range(4)) for t in range(7)], axis=1)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_array_equal(new_tail, x[:, -3:])
    _, short_tail = causal_depthwise_conv(x[:, :1], w, tail)  # T < kernel - 1: the tail slides
    np.testing.assert_array_equal(short_tail, padded[:, 1:4])


def test_split_sequence_with_carried_state_equals_whole():
    m = mixer()
    run = jax.jit(lambda x, state: m.span(x, state)[:2])
    x = jax.random.normal(jax.random.key(3), (2, 9, 16))
    whole, final = run(x, m.init_state(2))
    first, state = run(x[:, :5], m.init_state(2))
    second, state = run(x[:, 5:], state)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, atol=1e-5)
    np.testing.assert_allclose(state["S"], final["S"], atol=1e-5)
    np.testing.assert_allclose(state["conv"], final["conv"], atol=1e-6)


def test_step_by_step_equals_sequence():
    m = mixer()
    x = jax.random.normal(jax.random.key(4), (2, 6, 16))
    whole, final = jax.jit(lambda x, state: m.span(x, state)[:2])(x, m.init_state(2))
    step = jax.jit(lambda x, state: m.step(x, state)[:2])
    state, ys = m.init_state(2), []
    for t in range(6):
        y, state = step(x[:, t], state)
        ys.append(y)
    np.testing.assert_allclose(jnp.stack(ys, 1), whole, atol=1e-5)
    np.testing.assert_allclose(state["S"], final["S"], atol=1e-5)


def test_state_shapes_and_mamba2_gate_initialisation():
    m = mixer(heads=2, v_heads=4, v_head_dim=6)
    state = m.init_state(3)
    assert state["S"].shape == (3, 4, 8, 6) and state["S"].dtype == jnp.float32
    assert state["conv"].shape == (3, 3, 2 * 2 * 8 + 4 * 6)
    a = np.exp(np.asarray(m.A_log[...]))
    assert np.all((a > 0) & (a <= 16))
    dt = np.asarray(jax.nn.softplus(m.dt_bias[...]))
    assert np.all((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 1e-1 * (1 + 1e-5)))
    assert logical_axes(m.conv_q) == ("conv", "heads", "head_dim")
    assert np.all(np.abs(m.conv_q[...]) <= 1 / math.sqrt(4))


def test_forget_gate_is_in_zero_one_and_write_strength_too():
    m = mixer()
    x = 3 * jax.random.normal(jax.random.key(5), (2, 5, 16))
    g, beta = m._gates(x)
    assert np.all(np.asarray(g) <= 0) and np.all((np.asarray(beta) > 0) & (np.asarray(beta) < 1))


def test_rejects_bad_value_head_grouping():
    with pytest.raises(ValueError, match="gdn_v_heads"):
        GDNFields(gdn_heads=2, gdn_v_heads=3)
