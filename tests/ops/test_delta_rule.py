"""The gated delta rule, recurrent and chunked forms: reference vectors, chunked == recurrent on
random shapes, state hand-off, very negative gates, grouped value heads, decoding steps, bad input."""
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

from sleep_jax.numerics import rel_rms
from sleep_jax.ops import gated_delta_rule, gated_delta_rule_step
from sleep_jax.ops.delta_rule.chunked import chunked_gated_delta_rule, solve_unit_lower
from tests.ops.util import random_inputs

GOLDEN = np.load(pathlib.Path(__file__).parents[2] / "third_party/golden/gated_delta_rule.npz")
NUM_CASES = 4
INPUTS = ("q", "k", "v", "g", "beta", "initial_state")
IMPLS = ("recurrent", "chunked")


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def run(inputs, *, impl, chunk_size=64):
    """(o, final_state) of `gated_delta_rule` on a dict of inputs."""
    return gated_delta_rule(**inputs, output_final_state=True, impl=impl, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def outputs_and_grads(inputs, do, d_final_state, *, impl, chunk_size=64):
    """(o, final_state, grads): grads is a dict of the gradients of every input of
    sum(o * do) + sum(final_state * d_final_state)."""
    def loss(inputs):
        o, final_state = gated_delta_rule(**inputs, output_final_state=True, impl=impl, chunk_size=chunk_size)
        return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(final_state * d_final_state), (o, final_state)

    (_, (o, final_state)), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return o, final_state, grads


def golden_case(case, dtype=jnp.float32):
    """Inputs (in `dtype`; the initial state stays float32) and the two cotangents of one case."""
    inputs = {name: jnp.asarray(GOLDEN[f"case{case}/{name}"], dtype)
              for name in INPUTS if f"case{case}/{name}" in GOLDEN}
    if "initial_state" in inputs:
        inputs["initial_state"] = inputs["initial_state"].astype(jnp.float32)
    return inputs, GOLDEN[f"case{case}/do"], GOLDEN[f"case{case}/d_final_state"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(NUM_CASES))
def test_matches_reference_vectors_float32(case, impl):
    inputs, do, d_final_state = golden_case(case)
    o, final_state, grads = outputs_and_grads(inputs, do, d_final_state, impl=impl)
    assert rel_rms(o, GOLDEN[f"case{case}/o"]) <= 1e-5
    assert rel_rms(final_state, GOLDEN[f"case{case}/final_state"]) <= 1e-5
    for name, grad in grads.items():
        assert rel_rms(grad, GOLDEN[f"case{case}/d_{name}"]) <= 1e-4, name


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [1, 3])
def test_matches_reference_vectors_bfloat16_inputs(case, impl):
    inputs, do, d_final_state = golden_case(case, jnp.bfloat16)
    o, final_state, grads = outputs_and_grads(inputs, do, d_final_state, impl=impl)
    assert o.dtype == jnp.bfloat16 and final_state.dtype == jnp.float32
    assert rel_rms(o, GOLDEN[f"case{case}/o"]) <= 2e-2
    assert rel_rms(final_state, GOLDEN[f"case{case}/final_state"]) <= 2e-2
    for name, grad in grads.items():
        assert rel_rms(grad, GOLDEN[f"case{case}/d_{name}"]) <= 2e-2, name


def test_solve_unit_lower_value_and_both_derivatives_match_float64():
    # C = 64 rows: four diagonal blocks of 16 and block substitution between them. The derivative is
    # dX = (I + A)^-1 (dR - dA X) forward, R_bar = (I + A)^-T X_bar and A_bar = -R_bar X^T backward.
    rng = np.random.default_rng(21)
    C, D = 64, 24
    A = np.tril(rng.standard_normal((2, C, C)) / np.sqrt(C), -1)
    R, dR, X_bar = (rng.standard_normal((2, C, D)) for _ in range(3))
    dA = np.tril(rng.standard_normal((2, C, C)), -1)
    L = np.eye(C) + A
    X = np.linalg.solve(L, R)
    f32 = lambda *xs: [jnp.asarray(x, jnp.float32) for x in xs]
    got, tangent = jax.jvp(solve_unit_lower, f32(A, R), f32(dA, dR))
    assert rel_rms(got, X) <= 1e-6
    assert rel_rms(tangent, np.linalg.solve(L, dR - dA @ X)) <= 1e-5
    A_bar, R_bar = jax.grad(lambda a, r: jnp.sum(solve_unit_lower(a, r) * X_bar), argnums=(0, 1))(*f32(A, R))
    want_R_bar = np.linalg.solve(np.swapaxes(L, -1, -2), X_bar)
    assert rel_rms(R_bar, want_R_bar) <= 1e-5
    assert rel_rms(np.tril(A_bar, -1), np.tril(-want_R_bar @ np.swapaxes(X, -1, -2), -1)) <= 1e-5


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 16), B=st.integers(1, 2), T=st.integers(1, 80), H=st.integers(1, 2),
       group=st.integers(1, 2), K=st.sampled_from([4, 8, 16]), V=st.sampled_from([4, 8, 12]),
       chunk_size=st.sampled_from([16, 32, 64]))
def test_chunked_equals_recurrent(seed, B, T, H, group, K, V, chunk_size):
    inputs = random_inputs(seed, B, T, H, K, V, HV=H * group)
    want = run(inputs, impl="recurrent")
    got = run(inputs, impl="chunked", chunk_size=chunk_size)
    assert rel_rms(got[0], want[0]) <= 1e-5
    assert rel_rms(got[1], want[1]) <= 1e-5


def test_chunked_gradients_equal_recurrent_gradients_grouped_heads():
    # T = 37 is not a multiple of the chunk, K != V, two value heads per key head.
    inputs = random_inputs(3, B=2, T=37, H=1, K=8, V=12, HV=2)
    do, d_final_state = np.random.default_rng(4).standard_normal((2, 37, 2, 12)), np.ones((2, 2, 8, 12))
    want = outputs_and_grads(inputs, do, d_final_state, impl="recurrent")
    got = outputs_and_grads(inputs, do, d_final_state, impl="chunked", chunk_size=16)
    for name in INPUTS:
        assert rel_rms(got[2][name], want[2][name]) <= 1e-5, name


def test_grouped_value_heads_share_their_key_head():
    # Value head h reads key head h // (HV // H): the same as passing q and k repeated.
    inputs = random_inputs(5, B=1, T=20, H=2, K=8, V=8, HV=4)
    repeated = dict(inputs, q=jnp.repeat(inputs["q"], 2, axis=2), k=jnp.repeat(inputs["k"], 2, axis=2))
    got = run(inputs, impl="chunked", chunk_size=16)
    want = run(repeated, impl="recurrent")
    assert rel_rms(got[0], want[0]) <= 1e-5
    assert rel_rms(got[1], want[1]) <= 1e-5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", [1, 16, 37])  # chunk_size 16: on and off chunk boundaries
def test_state_hand_off(impl, split):
    inputs = random_inputs(11, B=1, T=50, H=2, K=8, V=4)
    whole_o, whole_state = run(inputs, impl=impl, chunk_size=16)
    head = {name: x[:, :split] for name, x in inputs.items() if name != "initial_state"}
    tail = {name: x[:, split:] for name, x in inputs.items() if name != "initial_state"}
    head_o, head_state = run(dict(head, initial_state=inputs["initial_state"]), impl=impl, chunk_size=16)
    tail_o, tail_state = run(dict(tail, initial_state=head_state), impl=impl, chunk_size=16)
    assert rel_rms(jnp.concatenate([head_o, tail_o], axis=1), whole_o) <= 1e-5
    assert rel_rms(tail_state, whole_state) <= 1e-5


def test_decoding_steps_continue_the_sequence():
    # Prefill with the chunked form, then decode token by token with gated_delta_rule_step.
    inputs = random_inputs(12, B=2, T=24, H=2, K=8, V=8)
    want_o, want_state = run(inputs, impl="recurrent")
    prefix = {name: x[:, :20] for name, x in inputs.items() if name != "initial_state"}
    _, state = run(dict(prefix, initial_state=inputs["initial_state"]), impl="chunked", chunk_size=16)
    step = jax.jit(functools.partial(gated_delta_rule_step, scale=8 ** -0.5))
    for t in range(20, 24):
        o, state = step(*(inputs[name][:, t] for name in INPUTS[:5]), state)
        assert rel_rms(o, want_o[:, t]) <= 1e-5
    assert rel_rms(state, want_state) <= 1e-5


def test_decoding_steps_read_key_heads_of_grouped_value_heads():
    # Two value heads per key head: the step takes q, k with the H key heads, as the impls do.
    inputs = random_inputs(14, B=1, T=12, H=2, K=8, V=4, HV=4)
    want_o, want_state = run(inputs, impl="recurrent")
    step = jax.jit(functools.partial(gated_delta_rule_step, scale=8 ** -0.5))
    state = inputs["initial_state"]
    for t in range(12):
        o, state = step(*(inputs[name][:, t] for name in INPUTS[:5]), state)
        assert rel_rms(o, want_o[:, t]) <= 1e-5
    assert rel_rms(state, want_state) <= 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_very_negative_gates_give_finite_values_and_gradients(impl):
    # g = -30 forgets everything at every step: o_t = scale beta_t (q_t . k_t) v_t.
    inputs = random_inputs(13, B=1, T=40, H=2, K=8, V=8)
    inputs["g"] = jnp.full_like(inputs["g"], -30.0)
    do, d_final_state = np.ones((1, 40, 2, 8)), np.ones((1, 2, 8, 8))
    o, final_state, grads = outputs_and_grads(inputs, do, d_final_state, impl=impl, chunk_size=32)
    for name, x in dict(o=o, final_state=final_state, **grads).items():
        assert bool(jnp.all(jnp.isfinite(x))), name
    qk = jnp.sum(inputs["q"] * inputs["k"], axis=-1) * 8 ** -0.5
    assert rel_rms(o, (qk * inputs["beta"])[..., None] * inputs["v"]) <= 1e-5


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_chunked_form_runs_on_batch_and_head_sharded_inputs(axis_type):
    # 8 simulated devices (conftest): batch over "data", value heads over "heads".
    mesh = jax.make_mesh((4, 2), ("data", "heads"), axis_types=(getattr(jax.sharding.AxisType, axis_type),) * 2)
    inputs = random_inputs(16, B=4, T=20, H=2, K=4, V=4)
    do, d_final_state = np.ones((4, 20, 2, 4)), np.ones((4, 2, 4, 4))
    want = outputs_and_grads(inputs, do, d_final_state, impl="chunked", chunk_size=16)
    spec = {name: P("data", "heads") if name == "initial_state" else P("data", None, "heads") for name in inputs}
    sharded = {name: jax.device_put(x, NamedSharding(mesh, spec[name])) for name, x in inputs.items()}
    with jax.set_mesh(mesh):
        got = outputs_and_grads(sharded, do, d_final_state, impl="chunked", chunk_size=16)
    for name, a, b in [("o", got[0], want[0]), ("final_state", got[1], want[1])] + [
            (name, got[2][name], want[2][name]) for name in INPUTS]:
        assert rel_rms(a, b) <= 1e-6, name


def test_padding_does_not_change_the_state():
    # T = 1 in a chunk of 64: the 63 padded tokens must leave the final state alone.
    inputs = random_inputs(14, B=1, T=1, H=1, K=4, V=4)
    want = run(inputs, impl="recurrent")
    got = run(inputs, impl="chunked", chunk_size=64)
    assert rel_rms(got[0], want[0]) <= 1e-6
    assert rel_rms(got[1], want[1]) <= 1e-6


def test_output_dtype_and_optional_final_state():
    inputs = random_inputs(15, B=1, T=5, H=1, K=4, V=4)
    inputs["v"] = inputs["v"].astype(jnp.bfloat16)
    del inputs["initial_state"]
    o, final_state = jax.jit(functools.partial(gated_delta_rule, impl="chunked", chunk_size=16))(**inputs)
    assert o.dtype == jnp.bfloat16 and o.shape == (1, 5, 1, 4)
    assert final_state is None


def _bad(**changes):
    inputs = random_inputs(0, B=1, T=6, H=2, K=4, V=4)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize("inputs, options, message", [
    (_bad(k=jnp.zeros((1, 6, 2, 5))), {}, "`k` shape"),
    (_bad(q=jnp.zeros((6, 2, 4))), {}, "`q` must be"),
    (_bad(v=jnp.zeros((1, 7, 2, 4))), {}, "`v` must be"),
    (_bad(v=jnp.zeros((1, 6, 3, 4))), {}, "value heads of `v`"),
    (_bad(g=jnp.zeros((1, 6, 1))), {}, "`g` must be"),
    (_bad(beta=jnp.zeros((1, 6))), {}, "`beta` must be"),
    (_bad(initial_state=jnp.zeros((1, 2, 4, 5))), {}, "`initial_state` must be"),
    (_bad(q=jnp.zeros((1, 0, 2, 4)), k=jnp.zeros((1, 0, 2, 4)), v=jnp.zeros((1, 0, 2, 4)),
          g=jnp.zeros((1, 0, 2)), beta=jnp.zeros((1, 0, 2))), {}, "sequence length T"),
    (_bad(q=jnp.zeros((1, 6, 2, 4), jnp.int32)), {}, "`q` must be floating point"),
    (_bad(initial_state=jnp.zeros((1, 2, 4, 4), jnp.int32)), {}, "`initial_state` must be floating point"),
    (_bad(), dict(impl="fast"), "unknown `impl`"),
    (_bad(), dict(chunk_size=48), "`chunk_size`"),
])
def test_bad_input_raises_value_error_naming_the_argument(inputs, options, message):
    with pytest.raises(ValueError, match=message):
        gated_delta_rule(**inputs, **options)


def test_chunked_form_rejects_a_chunk_size_that_is_not_a_power_of_two():
    inputs = random_inputs(0, B=1, T=6, H=1, K=4, V=4)
    with pytest.raises(ValueError, match="`chunk_size`"):
        chunked_gated_delta_rule(**inputs, scale=0.5, chunk_size=24)
