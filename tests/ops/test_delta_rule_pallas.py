"""The Pallas gated delta rule (run with interpret=True on CPU) against the reference vectors and
the recurrent reference: outputs, final states and every gradient."""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P, use_abstract_mesh

from sleep_jax.bench.programs import abstract_gpu, abstract_inputs, forward_and_gradient
from sleep_jax.numerics import rel_rms
from sleep_jax.ops import gated_delta_rule
from sleep_jax.ops.delta_rule.pallas import chunk_math, pallas_gated_delta_rule, sharded
from sleep_jax.ops.delta_rule.reference import recurrent_gated_delta_rule

GOLDEN = "third_party/golden/gated_delta_rule.npz"
INPUTS = ("q", "k", "v", "g", "beta", "initial_state")


def random_inputs(seed, B, T, H, K, V, dtype=jnp.float32, g_value=None):
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    q = jax.random.normal(keys[0], (B, T, H, K))
    k = jax.random.normal(keys[1], (B, T, H, K))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(keys[2], (B, T, H, V))
    g = -2.0 * jax.random.uniform(keys[3], (B, T, H)) if g_value is None else jnp.full((B, T, H), g_value)
    beta = jax.nn.sigmoid(jax.random.normal(keys[4], (B, T, H)))
    state = jax.random.normal(keys[5], (B, H, K, V))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), g, beta, state


def loss_and_grads(fn, inputs, seed=7):
    """Outputs and the gradients of sum(o * do) + sum(final_state * d_final_state)."""
    o_shape = inputs[2].shape
    s_shape = inputs[5].shape
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    do = jax.random.normal(k1, o_shape)
    d_final = jax.random.normal(k2, s_shape)

    def loss(*args):
        o, final_state = fn(*args)
        return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(final_state * d_final), (o, final_state)

    (_, (o, final_state)), grads = jax.jit(
        jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True))(*inputs)
    return o, final_state, grads


def kernels(chunk_size=64, **sizes):
    def fn(q, k, v, g, beta, state):
        return pallas_gated_delta_rule(q, k, v, g, beta, scale=q.shape[-1] ** -0.5,
                                       initial_state=state, chunk_size=chunk_size, sizes=sizes)
    return fn


def recurrent(q, k, v, g, beta, state):
    f32 = jnp.float32
    return recurrent_gated_delta_rule(q.astype(f32), k.astype(f32), v.astype(f32), g, beta,
                                      scale=q.shape[-1] ** -0.5, initial_state=state)


def test_chunk_math_gradients_equal_autodiff_of_chunk_forward():
    # The hand-written backward of one chunk (reverse_state_step + chunk_gradients, value dim in
    # three tiles) against jax.vjp of the forward chunk math, in plain jnp (no kernels).
    C, K, V, BV, scale, f32 = 16, 8, 12, 4, 0.3, jnp.float32
    q, k, v, g, beta, state = random_inputs(8, B=1, T=C, H=1, K=K, V=V)
    q, k, v = q[0, :, 0], k[0, :, 0], v[0, :, 0]
    g, beta, state = g[0], beta[0], state[0, 0]
    do, d_next = jax.random.normal(jax.random.PRNGKey(9), (C, V)), jax.random.normal(
        jax.random.PRNGKey(10), (K, V))

    def chunk(q, k, v, g, beta, state):
        gc = jnp.cumsum(g, axis=0)
        w, u = chunk_math.wy_factors(k, v, beta, gc, f32)
        v_new, next_state = chunk_math.state_step(state, w, u, k, gc, f32)
        return chunk_math.chunk_output(q, k, v_new, state, gc, scale, f32), next_state

    @jax.jit
    def by_hand(q, k, v, g, beta, state):
        gc = jnp.cumsum(g, axis=0)
        w, u = chunk_math.wy_factors(k, v, beta, gc, f32)
        v_new, _ = chunk_math.state_step(state, w, u, k, gc, f32)
        d_v_new, d_state = chunk_math.reverse_state_step(d_next, q, k, w, do, gc, scale, f32)
        tiles = lambda j: tuple(x[:, j * BV:(j + 1) * BV]
                                for x in (v, v_new, d_v_new, do, state, d_next))
        dv_tiles = {}
        dq, dk, dbeta, dgc = chunk_math.chunk_gradients(
            q, k, beta, gc, tiles, V // BV, dv_tiles.__setitem__, scale, f32)
        dv = jnp.concatenate([dv_tiles[j] for j in range(V // BV)], axis=1)
        dg = jnp.cumsum(dgc[::-1], axis=0)[::-1]  # gc = cumsum(g)
        return dq, dk, dv, dg, dbeta, d_state

    want = jax.jit(lambda *a: jax.vjp(chunk, *a)[1]((do, d_next)))(q, k, v, g, beta, state)
    got = by_hand(q, k, v, g, beta, state)
    for name, a, b in zip(INPUTS, got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("case", range(4))
def test_matches_reference_vectors(case):
    data = np.load(GOLDEN)
    get = lambda name: jnp.asarray(data[f"case{case}/{name}"], jnp.float32)
    q, v = get("q"), get("v")
    B, T, H, K = q.shape
    has_state = f"case{case}/initial_state" in data.files
    state = get("initial_state") if has_state else jnp.zeros((B, H, K, v.shape[-1]))
    do, d_final = get("do"), get("d_final_state")

    def loss(q, k, v, g, beta, state):
        o, final_state = gated_delta_rule(q, k, v, g, beta, initial_state=state,
                                          output_final_state=True, impl="pallas")
        return jnp.sum(o * do) + jnp.sum(final_state * d_final), (o, final_state)

    (_, (o, final_state)), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True))(
        q, get("k"), v, get("g"), get("beta"), state)
    assert rel_rms(o, data[f"case{case}/o"]) <= 1e-5
    assert rel_rms(final_state, data[f"case{case}/final_state"]) <= 1e-5
    for name, grad in zip(INPUTS, grads):
        if f"case{case}/d_{name}" in data.files:
            assert rel_rms(grad, data[f"case{case}/d_{name}"]) <= 1e-4, name


# The GPU structure (chunk loop inside the kernel, caller's layout, K and V padded to powers of
# two: V 24 -> 32 in two tiles of 16) and the TPU structure (sequential grid axis over chunks,
# head-major copy, K padded to a multiple (here 32), V = 24 in three tiles of 8).
@pytest.mark.parametrize("sizes", [
    dict(recurrence="loop", layout="tokens_first", pad_pow2=True, block_v=16),
    dict(recurrence="grid", layout="heads_first", k_multiple=32, block_v=8),
], ids=["gpu_structure", "tpu_structure"])
def test_matches_recurrent_ragged_length_and_v_tiles(sizes):
    # T = 37 is not a multiple of the chunk and K != V.
    inputs = random_inputs(0, B=2, T=37, H=2, K=16, V=24)
    got = loss_and_grads(kernels(chunk_size=16, **sizes), inputs)
    want = loss_and_grads(recurrent, inputs)
    assert rel_rms(got[0], want[0]) <= 1e-5
    assert rel_rms(got[1], want[1]) <= 1e-5
    for name, a, b in zip(INPUTS, got[2], want[2]):
        assert rel_rms(a, b) <= 1e-4, name


@pytest.mark.parametrize("K, V, dtype, tol", [(128, 128, jnp.float32, 1e-5),
                                               (256, 256, jnp.float32, 1e-5),
                                               (128, 128, jnp.bfloat16, 2e-2)],
                         ids=["k128_f32", "k256_f32", "k128_bf16"])
def test_gpu_block_sizes_at_model_head_sizes(K, V, dtype, tol):
    # The GPU entry of block_sizes as the GPU runs it (chunk 64, V in tiles of 64, bf16 inverse
    # at "high"), interpreted, at the head sizes the models use; T = 130 ends in a partial chunk.
    inputs = random_inputs(4, B=1, T=130, H=1, K=K, V=V, dtype=dtype)

    def gpu_kernels(q, k, v, g, beta, state):
        return pallas_gated_delta_rule(q, k, v, g, beta, scale=K ** -0.5, initial_state=state,
                                       backend="gpu", interpret=True)
    got = loss_and_grads(gpu_kernels, inputs)
    want = loss_and_grads(recurrent, inputs)
    assert rel_rms(got[0], want[0]) <= tol
    assert rel_rms(got[1], want[1]) <= tol
    for name, a, b in zip(INPUTS, got[2], want[2]):
        assert rel_rms(a, b) <= (1e-4 if dtype == jnp.float32 else tol), name


def test_grouped_value_heads_and_chunk_32():
    # One key head shared by three value heads; T = 45 spans two chunks of 32.
    q, k, v, g, beta, state = random_inputs(1, B=1, T=45, H=3, K=8, V=16)
    q, k = q[:, :, :1], k[:, :, :1]
    common = dict(initial_state=state, output_final_state=True, chunk_size=32)
    o, final_state = gated_delta_rule(q, k, v, g, beta, impl="pallas", **common)
    o_ref, final_ref = gated_delta_rule(q, k, v, g, beta, impl="recurrent", **common)
    assert rel_rms(o, o_ref) <= 1e-5
    assert rel_rms(final_state, final_ref) <= 1e-5


@pytest.mark.parametrize("layout", ["tokens_first", "heads_first"])
def test_grouped_value_heads_gradients_in_both_layouts(layout):
    # Two key heads, each read by two value heads through the kernels' index maps; dq and dk are
    # the sums over each key head's value heads.
    q, k, v, g, beta, state = random_inputs(8, B=2, T=40, H=4, K=16, V=16)
    inputs = (q[:, :, :2], k[:, :, :2], v, g, beta, state)
    got = loss_and_grads(kernels(chunk_size=16, layout=layout), inputs)
    want = loss_and_grads(recurrent, inputs)
    assert rel_rms(got[0], want[0]) <= 1e-5
    assert rel_rms(got[1], want[1]) <= 1e-5
    for name, a, b in zip(INPUTS, got[2], want[2]):
        assert a.shape == b.shape, name
        assert rel_rms(a, b) <= 1e-4, name


def test_bfloat16_close_to_float32_recurrent():
    inputs = random_inputs(2, B=1, T=40, H=2, K=16, V=16, dtype=jnp.bfloat16)
    o, final_state, grads = loss_and_grads(kernels(chunk_size=16), inputs)
    o_ref, final_ref, grads_ref = loss_and_grads(recurrent, inputs)
    assert o.dtype == jnp.bfloat16 and final_state.dtype == jnp.float32
    assert rel_rms(o, o_ref) <= 2e-2
    assert rel_rms(final_state, final_ref) <= 2e-2
    for name, a, b in zip(INPUTS, grads, grads_ref):
        assert a.dtype == inputs[INPUTS.index(name)].dtype, name
        assert rel_rms(a, b) <= 2e-2, name


def test_very_negative_gate_stays_finite():
    # g = -30 per token: the state is wiped every step; nothing may overflow into inf or nan.
    inputs = random_inputs(3, B=1, T=20, H=1, K=8, V=8, g_value=-30.0)
    got = loss_and_grads(kernels(chunk_size=16), inputs)
    want = loss_and_grads(recurrent, inputs)
    for a, b in zip((got[0], got[1], *got[2]), (want[0], want[1], *want[2])):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_sharded_over_batch_and_heads_matches_single_device():
    # The project's mesh axes: batch over ("data", "fsdp"), heads over "tensor".
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    batch = ("data", "fsdp")
    q, k, v, g, beta, state = random_inputs(4, B=4, T=24, H=2, K=8, V=8)
    scale = 8 ** -0.5
    seq = NamedSharding(mesh, P(batch, None, "tensor", None))
    gate = NamedSharding(mesh, P(batch, None, "tensor"))
    state_sharding = NamedSharding(mesh, P(batch, "tensor", None, None))
    placed = [jax.device_put(x, s) for x, s in
              zip((q, k, v, g, beta, state), (seq, seq, seq, gate, gate, state_sharding))]

    @jax.jit
    def run(q, k, v, g, beta, state):
        return sharded(q, k, v, g, beta, scale=scale, initial_state=state, mesh=mesh,
                       batch_axis=batch, head_axis="tensor", chunk_size=16)

    o, final_state = run(*placed)
    o_ref, final_ref = pallas_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=state,
                                               chunk_size=16)
    assert o.sharding.is_equivalent_to(seq, o.ndim)
    np.testing.assert_allclose(np.asarray(o), np.asarray(o_ref), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(final_state), np.asarray(final_ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit])
def test_pallas_impl_under_an_ambient_mesh_runs_in_shard_map(axis_type):
    # The train step traces under jax.set_mesh; gated_delta_rule(impl="pallas") then splits batch
    # rows over (data, fsdp) and value heads over tensor, and gives the single-device values and
    # gradients.
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(axis_type,) * 3)
    q, k, v, g, beta, state = random_inputs(6, B=4, T=20, H=2, K=8, V=8)

    def loss(q, k, v, g, beta, state):
        o, final_state = gated_delta_rule(q, k, v, g, beta, initial_state=state, impl="pallas",
                                          chunk_size=16, output_final_state=True)
        return jnp.sum(o * o) + jnp.sum(final_state), (o, final_state)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5), has_aux=True))
    want_grads, (want_o, want_state) = grad(q, k, v, g, beta, state)
    with jax.set_mesh(mesh):
        assert "shard_map" in str(jax.make_jaxpr(grad)(q, k, v, g, beta, state))
        got_grads, (got_o, got_state) = grad(q, k, v, g, beta, state)
    for got, want in zip((got_o, got_state, *got_grads), (want_o, want_state, *want_grads)):
        assert rel_rms(got, want) <= 1e-6


def test_bad_arguments_raise():
    q, k, v, g, beta, state = random_inputs(5, B=1, T=4, H=1, K=8, V=8)
    with pytest.raises(ValueError, match="chunk_size"):
        pallas_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=state, chunk_size=48)
    with pytest.raises(ValueError, match="backend"):
        pallas_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=state, backend="npu")
    with pytest.raises(ValueError, match="sizes"):
        pallas_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=state, sizes={"bv": 8})
    with pytest.raises(ValueError, match="recurrence"):
        pallas_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=state, backend="gpu",
                                interpret=False, sizes={"recurrence": "grid"})
    mesh = jax.make_mesh((8,), ("data",))
    with pytest.raises(ValueError, match="head_axis"):
        sharded(q, k, v, g, beta, scale=1.0, initial_state=state, mesh=mesh, head_axis="model")


@pytest.mark.parametrize("platform, backend", [("cuda", "gpu"), ("tpu", "tpu")])
@pytest.mark.parametrize("T, H, K, V", [(80, 2, 24, 32), (4096, 16, 128, 128), (200, 2, 256, 256)],
                         ids=["small", "anchor", "k256"])
def test_kernels_lower_for_triton_and_mosaic_tpu(platform, backend, T, H, K, V):
    # Lowering only (no accelerator here): every kernel of the forward and backward must pass the
    # Pallas Triton / Mosaic TPU lowering with that backend's block sizes. Compilation by Triton or
    # by the TPU compiler is checked in tests/bench (kernel_resources, tpu_compile).
    _, gradient = forward_and_gradient(backend)
    # Lowering for a GPU with no GPU attached: jax >= 0.11 reads the target from the abstract mesh.
    target = use_abstract_mesh(abstract_gpu()) if platform == "cuda" else contextlib.nullcontext()
    with target:
        lowered = jax.jit(gradient).trace(*abstract_inputs(1, T, H, K, V, jnp.bfloat16)).lower(
            lowering_platforms=(platform,))
    text = lowered.as_text()
    marker = "__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call"
    assert text.count(marker) == 7  # wy_prep, recurrence, output; both again; 2 backward kernels
