"""Backward kernels of the chunked gated delta rule: the mirror of `forward.py`.

The backward re-runs `forward.wy_prep` and `forward.recurrence` to get the per-chunk start states
(nothing but the inputs is saved by the forward), then:
  4. `reverse_recurrence`  parallel over (head, V tile), sequential over chunks from last to first
                           with the state gradient dS [K, BV] on chip in float32: writes the
                           gradient of each chunk's end state dh, the gradient of v_new, and the
                           gradient of the initial state.
  5. `chunk_gradients`     parallel over (head, chunk): dq, dk, dv, dbeta and d(gc).
"""
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from sleep_jax.ops.delta_rule.pallas import chunk_math
from sleep_jax.ops.delta_rule.pallas.launch import KernelConfig, call, token_dims, token_shape, token_spec


def reverse_recurrence(q, k, w, d_o, gc, d_final_state, cfg: KernelConfig):
    """Returns (dh [N, NT*K, V] input dtype: gradient of each chunk's end state,
    d_v_new (per-token, width V) float32, d_initial_state [N, K, V] float32)."""
    n, tp, dv = token_dims(d_o, cfg)
    dk = q.shape[-1]
    c, bv = cfg.chunk, cfg.block_v
    nt = tp // c
    out_shape = [jax.ShapeDtypeStruct((n, nt * dk, dv), q.dtype),
                 token_shape(n, tp, dv, jnp.float32, cfg),
                 jax.ShapeDtypeStruct((n, dk, dv), jnp.float32)]

    if cfg.recurrence == "loop":
        def kernel(q_ref, k_ref, w_ref, do_ref, gc_ref, dsf_ref, dh_ref, dvn_ref, ds0_ref):
            def body(step, d_state):
                t = nt - 1 - step
                rows = pl.ds(pl.multiple_of(t * c, c), c)
                dh_ref[pl.ds(pl.multiple_of(t * dk, dk), dk), :] = d_state.astype(dh_ref.dtype)
                d_v_new, d_state = chunk_math.reverse_state_step(
                    d_state, q_ref[rows, :], k_ref[rows, :], w_ref[rows, :], do_ref[rows, :],
                    gc_ref[rows, :], cfg.scale, cfg.matmul_dtype)
                dvn_ref[rows, :] = d_v_new
                return d_state

            ds0_ref[...] = jax.lax.fori_loop(0, nt, body, dsf_ref[...].astype(jnp.float32))

        seq = lambda d, key_heads=False: token_spec(tp, d, lambda i, j: (i, 0, 0), cfg, key_heads=key_heads)
        seq_v = token_spec(tp, bv, lambda i, j: (i, 0, j), cfg)
        state = pl.BlockSpec((None, dk, bv), lambda i, j: (i, 0, j))
        return call(kernel, cfg, grid=(n, dv // bv),
                    in_specs=[seq(dk, True), seq(dk, True), seq(dk), seq_v, seq(1), state],
                    out_specs=[pl.BlockSpec((None, nt * dk, bv), lambda i, j: (i, 0, j)), seq_v,
                               state],
                    out_shape=out_shape, name="gdr_reverse_recurrence")(
            q, k, w, d_o, gc, d_final_state)

    def kernel(q_ref, k_ref, w_ref, do_ref, gc_ref, dsf_ref, dh_ref, dvn_ref, ds0_ref):
        # ds0_ref's block index is the same for every step, so it stays on chip: the carry.
        @pl.when(pl.program_id(2) == 0)
        def _():
            ds0_ref[...] = dsf_ref[...]

        d_state = ds0_ref[...]
        dh_ref[...] = d_state.astype(dh_ref.dtype)
        d_v_new, d_state = chunk_math.reverse_state_step(
            d_state, q_ref[...], k_ref[...], w_ref[...], do_ref[...], gc_ref[...], cfg.scale,
            cfg.matmul_dtype)
        dvn_ref[...] = d_v_new
        ds0_ref[...] = d_state

    back = lambda t: nt - 1 - t
    tok = lambda d, key_heads=False: token_spec(c, d, lambda i, j, t: (i, back(t), 0), cfg,
                                                key_heads=key_heads)
    tok_v = token_spec(c, bv, lambda i, j, t: (i, back(t), j), cfg)
    state = pl.BlockSpec((None, dk, bv), lambda i, j, t: (i, 0, j))
    return call(kernel, cfg, grid=(n, dv // bv, nt),
                in_specs=[tok(dk, True), tok(dk, True), tok(dk), tok_v, tok(1), state],
                out_specs=[pl.BlockSpec((None, dk, bv), lambda i, j, t: (i, back(t), j)), tok_v,
                           state],
                out_shape=out_shape, sequential_last=True,
                name="gdr_reverse_recurrence")(q, k, w, d_o, gc, d_final_state)


def chunk_gradients(q, k, v, beta, gc, h, dh, v_new, d_v_new, d_o, cfg: KernelConfig):
    """Returns per-token (dq, dk in q's dtype, dv in v's dtype, dbeta, dgc float32), all per
    value head (the caller sums dq, dk over the value heads of each key head).

    One program per (head, chunk); inside, the value dimension is walked in tiles of
    `cfg.block_v` so that only [K, block_v] of the two chunk states is live at a time.
    """
    n, tp, dv = token_dims(v, cfg)
    dk = q.shape[-1]
    c, bv = cfg.chunk, cfg.block_v

    def kernel(q_ref, k_ref, v_ref, beta_ref, gc_ref, h_ref, dh_ref, vn_ref, dvn_ref, do_ref,
               dq_ref, dk_ref, dv_ref, dbeta_ref, dgc_ref):
        def load_tile(j):
            cols = pl.ds(j * bv, bv)
            return (v_ref[:, cols], vn_ref[:, cols], dvn_ref[:, cols], do_ref[:, cols],
                    h_ref[:, cols].astype(jnp.float32), dh_ref[:, cols].astype(jnp.float32))

        def store_dv(j, value):
            dv_ref[:, pl.ds(j * bv, bv)] = value.astype(dv_ref.dtype)

        grads = chunk_math.chunk_gradients(
            q_ref[...], k_ref[...], beta_ref[...], gc_ref[...], load_tile, dv // bv, store_dv,
            cfg.scale, cfg.matmul_dtype, cfg.inverse_precision)
        for ref, grad in zip((dq_ref, dk_ref, dbeta_ref, dgc_ref), grads):
            ref[...] = grad.astype(ref.dtype)

    tok = lambda d, key_heads=False: token_spec(c, d, lambda i, t: (i, t, 0), cfg, key_heads=key_heads)
    state = pl.BlockSpec((None, dk, dv), lambda i, t: (i, t, 0))
    return call(kernel, cfg, grid=(n, tp // c),
                in_specs=[tok(dk, True), tok(dk, True), tok(dv), tok(1), tok(1), state, state, tok(dv),
                          tok(dv), tok(dv)],
                out_specs=[tok(dk), tok(dk), tok(dv), tok(1), tok(1)],
                out_shape=[token_shape(n, tp, dk, q.dtype, cfg), token_shape(n, tp, dk, k.dtype, cfg),
                           token_shape(n, tp, dv, v.dtype, cfg),
                           token_shape(n, tp, 1, jnp.float32, cfg),
                           token_shape(n, tp, 1, jnp.float32, cfg)],
                name="gdr_chunk_gradients")(q, k, v, beta, gc, h, dh, v_new, d_v_new, d_o)
