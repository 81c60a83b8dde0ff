"""Forward kernels of the chunked gated delta rule (layout in `launch.py`, math in `chunk_math.py`).

Pipeline, as in flash-linear-attention's chunk_gated_delta_rule_fwd:
  1. `wy_prep`       parallel over (head, chunk): w, u from the decay matrix and (I + L)^-1.
  2. `recurrence`    parallel over (head, V tile), sequential over chunks with the state [K, BV]
                     kept on chip in float32: writes each chunk's start state h and v_new.
  3. `output`        parallel over (head, chunk, V tile): o from q, k, v_new and h.
"""
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from sleep_jax.ops.delta_rule.pallas import chunk_math
from sleep_jax.ops.delta_rule.pallas.launch import KernelConfig, call, token_dims, token_shape, token_spec


def wy_prep(k, v, beta, gc, cfg: KernelConfig):
    """(w [.., K], u [.., V]) per-token arrays in the input dtype."""
    n, tp, dv = token_dims(v, cfg)
    dk = k.shape[-1]
    c = cfg.chunk

    def kernel(k_ref, v_ref, beta_ref, gc_ref, w_ref, u_ref):
        w, u = chunk_math.wy_factors(k_ref[...], v_ref[...], beta_ref[...], gc_ref[...],
                                     cfg.matmul_dtype, cfg.inverse_precision)
        w_ref[...] = w.astype(w_ref.dtype)
        u_ref[...] = u.astype(u_ref.dtype)

    tok = lambda d, key_heads=False: token_spec(c, d, lambda i, j: (i, j, 0), cfg, key_heads=key_heads)
    return call(kernel, cfg, grid=(n, tp // c),
                in_specs=[tok(dk, True), tok(dv), tok(1), tok(1)],
                out_specs=[tok(dk), tok(dv)],
                out_shape=[token_shape(n, tp, dk, k.dtype, cfg), token_shape(n, tp, dv, v.dtype, cfg)],
                name="gdr_wy_prep")(k, v, beta, gc)


def recurrence(w, u, k, gc, initial_state, cfg: KernelConfig):
    """Inter-chunk state recurrence.

    Returns (h [N, NT*K, V] chunk start states in the input dtype, v_new (per-token, width V)
    in the input dtype, final state [N, K, V] float32).
    """
    n, tp, dv = token_dims(u, cfg)
    dk = k.shape[-1]
    c, bv = cfg.chunk, cfg.block_v
    nt = tp // c
    out_shape = [jax.ShapeDtypeStruct((n, nt * dk, dv), k.dtype),
                 token_shape(n, tp, dv, u.dtype, cfg),
                 jax.ShapeDtypeStruct((n, dk, dv), jnp.float32)]

    if cfg.recurrence == "loop":
        def kernel(w_ref, u_ref, k_ref, gc_ref, s0_ref, h_ref, vn_ref, sf_ref):
            def body(t, state):
                rows = pl.ds(pl.multiple_of(t * c, c), c)
                h_ref[pl.ds(pl.multiple_of(t * dk, dk), dk), :] = state.astype(h_ref.dtype)
                v_new, state = chunk_math.state_step(state, w_ref[rows, :], u_ref[rows, :],
                                                     k_ref[rows, :], gc_ref[rows, :],
                                                     cfg.matmul_dtype)
                vn_ref[rows, :] = v_new.astype(vn_ref.dtype)
                return state

            sf_ref[...] = jax.lax.fori_loop(0, nt, body, s0_ref[...].astype(jnp.float32))

        seq = lambda d, key_heads=False: token_spec(tp, d, lambda i, j: (i, 0, 0), cfg, key_heads=key_heads)
        seq_v = token_spec(tp, bv, lambda i, j: (i, 0, j), cfg)
        state = pl.BlockSpec((None, dk, bv), lambda i, j: (i, 0, j))
        return call(kernel, cfg, grid=(n, dv // bv),
                    in_specs=[seq(dk), seq_v, seq(dk, True), seq(1), state],
                    out_specs=[pl.BlockSpec((None, nt * dk, bv), lambda i, j: (i, 0, j)), seq_v,
                               state],
                    out_shape=out_shape, name="gdr_recurrence")(w, u, k, gc, initial_state)

    def kernel(w_ref, u_ref, k_ref, gc_ref, s0_ref, h_ref, vn_ref, sf_ref):
        # sf_ref's block index is the same for every chunk, so it stays on chip: the carry.
        @pl.when(pl.program_id(2) == 0)
        def _():
            sf_ref[...] = s0_ref[...]

        state = sf_ref[...]
        h_ref[...] = state.astype(h_ref.dtype)
        v_new, state = chunk_math.state_step(state, w_ref[...], u_ref[...], k_ref[...],
                                             gc_ref[...], cfg.matmul_dtype)
        vn_ref[...] = v_new.astype(vn_ref.dtype)
        sf_ref[...] = state

    tok = lambda d, key_heads=False: token_spec(c, d, lambda i, j, t: (i, t, 0), cfg, key_heads=key_heads)
    tok_v = token_spec(c, bv, lambda i, j, t: (i, t, j), cfg)
    state = pl.BlockSpec((None, dk, bv), lambda i, j, t: (i, 0, j))
    return call(kernel, cfg, grid=(n, dv // bv, nt),
                in_specs=[tok(dk), tok_v, tok(dk, True), tok(1), state],
                out_specs=[pl.BlockSpec((None, dk, bv), lambda i, j, t: (i, t, j)), tok_v, state],
                out_shape=out_shape, sequential_last=True, name="gdr_recurrence")(
        w, u, k, gc, initial_state)


def output(q, k, v_new, h, gc, out_dtype, cfg: KernelConfig):
    """o (per-token, width V) in `out_dtype`."""
    n, tp, dv = token_dims(v_new, cfg)
    dk = q.shape[-1]
    c, bv = cfg.chunk, cfg.block_v

    def kernel(q_ref, k_ref, vn_ref, h_ref, gc_ref, o_ref):
        o = chunk_math.chunk_output(q_ref[...], k_ref[...], vn_ref[...], h_ref[...], gc_ref[...],
                                    cfg.scale, cfg.matmul_dtype)
        o_ref[...] = o.astype(o_ref.dtype)

    tok = lambda d, key_heads=False: token_spec(c, d, lambda i, t, j: (i, t, 0), cfg, key_heads=key_heads)
    tok_v = token_spec(c, bv, lambda i, t, j: (i, t, j), cfg)
    return call(kernel, cfg, grid=(n, tp // c, dv // bv),
                in_specs=[tok(dk, True), tok(dk, True), tok_v,
                          pl.BlockSpec((None, dk, bv), lambda i, t, j: (i, t, j)), tok(1)],
                out_specs=tok_v,
                out_shape=token_shape(n, tp, dv, out_dtype, cfg), name="gdr_output")(q, k, v_new, h, gc)
