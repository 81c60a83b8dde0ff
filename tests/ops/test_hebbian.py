"""The gated Hebbian rule (Eq. 3), recurrent and chunked forms: a float64 numpy recurrence,
chunked == recurrent gradients, state hand-off, very negative gates, decoding steps, bad input,
and the pass-through of a zero write with no decay.

One shape (MAIN: grouped value heads HV = 2H, K != V, T not a multiple of the chunk) serves most
tests, so each jitted function compiles once per impl."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_jax.numerics import rel_rms
from sleep_jax.ops import gated_hebbian_rule, gated_hebbian_rule_step
from sleep_jax.ops.hebbian.chunked import chunked_gated_hebbian_rule
from tests.ops.util import random_inputs

INPUTS = ("q", "k", "v", "g", "beta", "initial_state")
IMPLS = ("recurrent", "chunked")
CHUNK = 16
MAIN = dict(B=2, T=37, H=2, K=8, V=6, HV=4)


def numpy_hebbian(q, k, v, g, beta, initial_state, scale):
    """The rule token by token in float64 numpy: (o [B, T, HV, V], final state [B, HV, K, V])."""
    q, k, v, g, beta, S = (np.asarray(x, np.float64) for x in (q, k, v, g, beta, initial_state))
    group = v.shape[2] // q.shape[2]
    q, k = np.repeat(q, group, axis=2), np.repeat(k, group, axis=2)  # value head h -> key head h // group
    o = np.zeros(v.shape)
    for t in range(q.shape[1]):
        S = np.exp(g[:, t])[..., None, None] * S + beta[:, t, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return o, S


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def run(inputs, *, impl, chunk_size=CHUNK):
    """(o, final_state) of `gated_hebbian_rule` on a dict of inputs."""
    return gated_hebbian_rule(**inputs, output_final_state=True, impl=impl, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def outputs_and_grads(inputs, do, d_final_state, *, impl, chunk_size=CHUNK):
    """(o, final_state, grads): grads of every input of sum(o * do) + sum(final_state * d_final_state)."""
    def loss(inputs):
        o, final_state = gated_hebbian_rule(**inputs, output_final_state=True, impl=impl, chunk_size=chunk_size)
        return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(final_state * d_final_state), (o, final_state)

    (_, (o, final_state)), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return o, final_state, grads


def cotangents(seed):
    rng = np.random.default_rng(seed)
    B, T, K, V, HV = (MAIN[n] for n in ("B", "T", "K", "V", "HV"))
    return (jnp.asarray(rng.standard_normal((B, T, HV, V)), jnp.float32),
            jnp.asarray(rng.standard_normal((B, HV, K, V)), jnp.float32))


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_numpy_recurrence(impl):
    inputs = random_inputs(1, **MAIN)
    want_o, want_state = numpy_hebbian(**inputs, scale=MAIN["K"] ** -0.5)
    o, final_state = run(inputs, impl=impl)
    assert o.shape == want_o.shape and final_state.dtype == jnp.float32
    assert rel_rms(o, want_o) <= 1e-5
    assert rel_rms(final_state, want_state) <= 1e-5


def test_chunked_gradients_equal_recurrent_gradients():
    inputs = random_inputs(2, **MAIN)
    do, d_final_state = cotangents(3)
    want = outputs_and_grads(inputs, do, d_final_state, impl="recurrent")
    got = outputs_and_grads(inputs, do, d_final_state, impl="chunked")
    assert rel_rms(got[0], want[0]) <= 1e-5
    assert rel_rms(got[1], want[1]) <= 1e-5
    for name in INPUTS:
        assert rel_rms(got[2][name], want[2][name]) <= 1e-5, name


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", [16, 21])  # chunk_size 16: on and off a chunk boundary
def test_state_hand_off(impl, split):
    inputs = random_inputs(4, **MAIN)
    whole_o, whole_state = run(inputs, impl=impl)
    head = {name: x[:, :split] for name, x in inputs.items() if name != "initial_state"}
    tail = {name: x[:, split:] for name, x in inputs.items() if name != "initial_state"}
    head_o, head_state = run(dict(head, initial_state=inputs["initial_state"]), impl=impl)
    tail_o, tail_state = run(dict(tail, initial_state=head_state), impl=impl)
    assert rel_rms(jnp.concatenate([head_o, tail_o], axis=1), whole_o) <= 1e-5
    assert rel_rms(tail_state, whole_state) <= 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_very_negative_gates_give_finite_values_and_gradients(impl):
    # g = -30 forgets everything at every step: o_t = scale beta_t (q_t . k_t) v_t.
    inputs = random_inputs(5, **MAIN)
    inputs["g"] = jnp.full_like(inputs["g"], -30.0)
    do, d_final_state = cotangents(6)
    o, final_state, grads = outputs_and_grads(inputs, do, d_final_state, impl=impl)
    for name, x in dict(o=o, final_state=final_state, **grads).items():
        assert bool(jnp.all(jnp.isfinite(x))), name
    group = MAIN["HV"] // MAIN["H"]
    qk = jnp.repeat(jnp.sum(inputs["q"] * inputs["k"], axis=-1), group, axis=2) * MAIN["K"] ** -0.5
    assert rel_rms(o, (qk * inputs["beta"])[..., None] * inputs["v"]) <= 1e-5


def test_decoding_steps_equal_the_sequence_form():
    # Grouped value heads: the step takes q, k with the H key heads, as the sequence form does.
    inputs = random_inputs(7, **MAIN)
    want_o, want_state = run(inputs, impl="chunked")
    step = jax.jit(functools.partial(gated_hebbian_rule_step, scale=MAIN["K"] ** -0.5))
    state, outputs = inputs["initial_state"], []
    for t in range(MAIN["T"]):
        o, state = step(*(inputs[name][:, t] for name in INPUTS[:5]), state)
        outputs.append(o)
    assert rel_rms(jnp.stack(outputs, axis=1), want_o) <= 1e-5
    assert rel_rms(state, want_state) <= 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_no_write_and_no_decay_pass_the_state_through(impl):
    # beta = 0, g = 0: S never changes, and o_t = scale q_t S (value head h reads key head h // group).
    inputs = random_inputs(8, **MAIN)
    inputs["g"], inputs["beta"] = jnp.zeros_like(inputs["g"]), jnp.zeros_like(inputs["beta"])
    o, final_state = run(inputs, impl=impl)
    S = np.asarray(inputs["initial_state"], np.float64)
    q = np.repeat(np.asarray(inputs["q"], np.float64), MAIN["HV"] // MAIN["H"], axis=2)
    assert rel_rms(final_state, S) <= 1e-6
    assert rel_rms(o, np.einsum("bthk,bhkv->bthv", MAIN["K"] ** -0.5 * q, S)) <= 1e-6


def _bad(**changes):
    inputs = random_inputs(0, B=1, T=6, H=2, K=4, V=4)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize("call, message", [
    (lambda: gated_hebbian_rule(**_bad(), impl="pallas"), "unknown `impl`"),
    (lambda: gated_hebbian_rule(**_bad(), chunk_size=48), "`chunk_size`"),
    (lambda: chunked_gated_hebbian_rule(**_bad(), scale=0.5, chunk_size=24), "`chunk_size`"),
    (lambda: gated_hebbian_rule(**_bad(k=jnp.zeros((1, 6, 2, 5)))), "`k` shape"),
    (lambda: gated_hebbian_rule(**_bad(v=jnp.zeros((1, 6, 3, 4)))), "value heads of `v`"),
    (lambda: gated_hebbian_rule(**_bad(g=jnp.zeros((1, 6, 1)))), "`g` must be"),
    (lambda: gated_hebbian_rule(**_bad(initial_state=jnp.zeros((1, 2, 4, 5)))), "`initial_state` must be"),
], ids=["impl", "chunk_size", "chunked_chunk_size", "k_shape", "v_heads", "g_shape", "initial_state_shape"])
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "hebbian" in str(error.value)
