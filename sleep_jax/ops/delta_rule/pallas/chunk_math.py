"""The math of one chunk of the gated delta rule, on values already loaded from kernel refs.

Every kernel in this package is a thin shell (load blocks, call one function here, store blocks),
so the math lives in one place and reads as plain `jnp`. Only operations that lower on all three
Pallas backends are used: 2-D `dot_general` (plain, transposed left, transposed right), `where`,
`exp`, `broadcasted_iota` and sums along one axis with `keepdims`. No slicing of values, no 1-D
vectors, no transposes other than those folded into a dot: per-token quantities are columns
`[C, 1]` and a row form `[1, C]` is made in-kernel with `column_to_row`.

Notation for one chunk of C tokens (one value head, all float32 unless said):
  gc [C, 1]    in-chunk cumulative sum of the log gate g (gc_i = g_0 + ... + g_i), so gc <= 0.
  D  [C, C]    D_ij = exp(gc_i - gc_j) for i >= j, else 0 (decay from token j to token i).
  L  [C, C]    L_ij = beta_i (k_i . k_j) D_ij for i > j, else 0.
  Tm [C, C]    (I + L)^-1, unit lower triangular.
  w  [C, K]    Tm (beta * exp(gc) * k);   u [C, V] = Tm (beta * v).
  S  [K, V]    state at chunk start;  v_new = u - w S (the true delta-rule writes of the chunk).
  o  [C, V]    exp(gc) * (scale q) S + ((scale q) k^T * D) v_new.
  S' [K, V]    exp(gc_last) S + (exp(gc_last - gc) * k)^T v_new (state at chunk end).
"""
import jax
import jax.numpy as jnp

_F32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST


def _dot(a, b, contract, mm_dtype, precision):
    a = a.astype(mm_dtype)
    b = b.astype(mm_dtype)
    if precision is None and mm_dtype == jnp.float32:
        precision = _HIGHEST
    return jax.lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                               preferred_element_type=_F32)


def mm(a, b, mm_dtype=_F32, precision=None):
    """a @ b with operands cast to `mm_dtype`, float32 accumulation and result. float32 operands
    use `precision`, by default HIGHEST (no TF32 / single bf16 pass)."""
    return _dot(a, b, ((1,), (0,)), mm_dtype, precision)


def mm_tn(a, b, mm_dtype=_F32, precision=None):
    """a^T @ b (contracts the first axis of both)."""
    return _dot(a, b, ((0,), (0,)), mm_dtype, precision)


def mm_nt(a, b, mm_dtype=_F32, precision=None):
    """a @ b^T (contracts the last axis of both)."""
    return _dot(a, b, ((1,), (1,)), mm_dtype, precision)


def inverse_precision(mm_dtype, bf16_inverse_precision):
    """Precision of the float32 dots of the triangular inverse: HIGHEST for float32 inputs; for
    bfloat16 inputs the backend's choice (e.g. HIGH = TF32 on GPU, cheaper than IEEE float32 and
    still finer than the bfloat16 operands everything else uses)."""
    if jnp.dtype(mm_dtype) == jnp.float32:
        return _HIGHEST
    return jax.lax.Precision(bf16_inverse_precision)


def _ids(c):
    rows = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
    return rows, cols


def column_to_row(x):
    """[C, 1] -> [1, C] without a transpose (masked column sum of the diagonal)."""
    c = x.shape[0]
    rows, cols = _ids(c)
    return jnp.sum(jnp.where(rows == cols, x, 0.0), axis=0, keepdims=True)


def row_to_column(x):
    """[1, C] -> [C, 1] without a transpose."""
    c = x.shape[1]
    rows, cols = _ids(c)
    return jnp.sum(jnp.where(rows == cols, x, 0.0), axis=1, keepdims=True)


def last_entry(x):
    """The last entry of a column [C, 1], as a [1, 1] array."""
    c = x.shape[0]
    ids = jax.lax.broadcasted_iota(jnp.int32, x.shape, 0)
    return jnp.sum(jnp.where(ids == c - 1, x, 0.0), axis=0, keepdims=True)


def decay_matrix(gc):
    """D [C, C]: exp(gc_i - gc_j) on and below the diagonal, 0 above (no overflow: masked first)."""
    c = gc.shape[0]
    rows, cols = _ids(c)
    causal = rows >= cols
    diff = jnp.where(causal, gc - column_to_row(gc), 0.0)
    return jnp.where(causal, jnp.exp(diff), 0.0)


def strictly_lower(x):
    rows, cols = _ids(x.shape[0])
    return jnp.where(rows > cols, x, 0.0)


def unit_lower_inverse(lower, precision=_HIGHEST):
    """(I + L)^-1 for a strictly lower triangular L [C, C] (C a power of two), float32.

    Block doubling: T_1 = I is the inverse of the 1x1 diagonal blocks of I + L. Given T_b, the
    exact inverse of the b x b diagonal blocks, the 2b x 2b diagonal blocks' inverse is
    T_2b = T_b - T_b L_b T_b, where L_b keeps the entries of L that couple the two b-halves of each
    2b block (standard block forward substitution, so as stable as it). log2(C) levels of two
    C x C matmuls each, float32 operands at `precision`.
    """
    c = lower.shape[0]
    if c & (c - 1):
        raise ValueError(f"unit_lower_inverse: chunk size {c} must be a power of two")
    rows, cols = _ids(c)
    inverse = (rows == cols).astype(_F32)
    level = 0  # block size b = 2 ** level; block ids by shifts (integer division lowers poorly)
    while (1 << level) < c:
        block = lambda ids, shift: jax.lax.shift_right_logical(ids, shift)
        coupling = ((block(rows, level) != block(cols, level))
                    & (block(rows, level + 1) == block(cols, level + 1)))
        lower_b = jnp.where(coupling, lower, 0.0)
        inverse = inverse - mm(inverse, mm(lower_b, inverse, precision=precision),
                               precision=precision)
        level += 1
    return inverse


def wy_inverse(k, beta, gc, mm_dtype, inv_precision=_HIGHEST):
    """(tm, lower): L = strictly_lower(beta k k^T * D) [C, C] and Tm = (I + L)^-1, float32.

    k [C, K] (input dtype); beta, gc [C, 1] float32.
    """
    lower = strictly_lower(beta * mm_nt(k, k, mm_dtype) * decay_matrix(gc))
    return unit_lower_inverse(lower, inv_precision), lower


def wy_factors(k, v, beta, gc, mm_dtype, inv_precision=_HIGHEST):
    """Intra-chunk preparation: (w [C, K], u [C, V]) float32.

    k [C, K], v [C, V] (input dtype); beta, gc [C, 1] float32.
    """
    tm, _ = wy_inverse(k, beta, gc, mm_dtype, inv_precision)
    w = mm(tm, k.astype(_F32) * (beta * jnp.exp(gc)), mm_dtype)
    u = mm(tm, v.astype(_F32) * beta, mm_dtype)
    return w, u


def state_step(state, w, u, k, gc, mm_dtype):
    """One chunk of the state recurrence.

    state [K, BV] float32 (chunk start), w [C, K], u [C, BV], k [C, K], gc [C, 1].
    Returns (v_new [C, BV] float32, next state [K, BV] float32).
    """
    v_new = u.astype(_F32) - mm(w, state, mm_dtype)
    gc_last = last_entry(gc)
    k_to_end = k.astype(_F32) * jnp.exp(gc_last - gc)
    next_state = jnp.exp(gc_last) * state + mm_tn(k_to_end, v_new, mm_dtype)
    return v_new, next_state


def chunk_output(q, k, v_new, state, gc, scale, mm_dtype):
    """o [C, BV] float32 of one chunk: inter-chunk part through `state` plus intra-chunk part."""
    qs = q.astype(_F32) * scale
    scores = mm_nt(qs, k, mm_dtype) * decay_matrix(gc)
    return mm(qs * jnp.exp(gc), state, mm_dtype) + mm(scores, v_new, mm_dtype)


def reverse_state_step(d_next, q, k, w, d_o, gc, scale, mm_dtype):
    """One chunk of the backward state recurrence (from the chunk's end state to its start state).

    d_next [K, BV] float32: gradient of the chunk's end state S'. q, k, w [C, K]; d_o [C, BV];
    gc [C, 1]. Returns (d_v_new [C, BV] float32, gradient of the chunk's start state [K, BV]).
    """
    qs = q.astype(_F32) * scale
    scores = mm_nt(qs, k, mm_dtype) * decay_matrix(gc)
    gc_last = last_entry(gc)
    k_to_end = k.astype(_F32) * jnp.exp(gc_last - gc)
    d_v_new = mm_tn(scores, d_o, mm_dtype) + mm(k_to_end, d_next, mm_dtype)
    d_state = (jnp.exp(gc_last) * d_next + mm_tn(qs * jnp.exp(gc), d_o, mm_dtype)
               - mm_tn(w, d_v_new, mm_dtype))
    return d_v_new, d_state


def chunk_gradients(q, k, beta, gc, load_tile, num_tiles, store_dv, scale, mm_dtype,
                    inv_precision=_HIGHEST):
    """Gradients of one chunk's inputs, given its start state and the gradients the reverse
    recurrence left (the state recurrence itself is differentiated in `reverse_state_step`).

    q, k [C, K]; beta, gc [C, 1] float32. The value dimension comes in `num_tiles` tiles of width
    BV, so that only [K, BV] of the states is live at a time: load_tile(j) returns tile j of
    (v, v_new, d_v_new, d_o) [C, BV] and of (state (chunk start), d_next (gradient of the chunk
    end state)) [K, BV] float32; store_dv(j, dv [C, BV] float32) receives tile j of dv.
    Returns float32 (dq [C, K], dk [C, K], dbeta [C, 1], dgc [C, 1]).
    """
    f32 = _F32
    q, k = q.astype(f32), k.astype(f32)
    qs = q * scale
    decay = decay_matrix(gc)
    gamma = jnp.exp(gc)
    gc_last = last_entry(gc)
    to_end = jnp.exp(gc_last - gc)
    tm, lower = wy_inverse(k, beta, gc, mm_dtype, inv_precision)
    c, dk = q.shape

    # Sums over the value dimension, tile by tile.
    d_out_v = jnp.zeros((c, c), f32)        # d_o v_new^T
    d_out_state = jnp.zeros((c, dk), f32)   # d_o S^T
    gate_out = jnp.zeros((c, 1), f32)       # rowsum(d_o * (gamma qs S))
    d_k_to_end = jnp.zeros((c, dk), f32)    # v_new dS'^T
    state_d_next = jnp.zeros((1, 1), f32)   # sum(S * dS')
    d_w = jnp.zeros((c, dk), f32)           # -d_v_new S^T
    d_tm_u = jnp.zeros((c, c), f32)         # d_v_new (beta v)^T
    dbeta = jnp.zeros((c, 1), f32)          # rowsum(v * d_xu)
    for j in range(num_tiles):
        v, v_new, d_v_new, d_o, state, d_next = load_tile(j)
        v = v.astype(f32)
        d_out_v += mm_nt(d_o, v_new, mm_dtype)
        d_out_state += mm_nt(d_o, state, mm_dtype)
        gate_out += jnp.sum(d_o.astype(f32) * mm(qs * gamma, state, mm_dtype), axis=1, keepdims=True)
        d_k_to_end += mm_nt(v_new, d_next, mm_dtype)
        state_d_next += jnp.sum(jnp.sum(state * d_next, axis=1, keepdims=True), axis=0, keepdims=True)
        d_w -= mm_nt(d_v_new, state, mm_dtype)
        # u = Tm (beta v): v's gradient is complete per tile.
        d_xu = mm_tn(tm, d_v_new, mm_dtype)
        store_dv(j, beta * d_xu)
        dbeta += jnp.sum(v * d_xu, axis=1, keepdims=True)
        d_tm_u += mm_nt(d_v_new, v * beta, mm_dtype)

    # Output o = gamma * qs S + (qs k^T * D) v_new.
    scores = mm_nt(qs, k, mm_dtype) * decay                  # P
    d_scores = d_out_v * decay                               # dP * D (causal through D)
    dqs = gamma * d_out_state + mm(d_scores, k, mm_dtype)
    dk_ = mm_tn(d_scores, qs, mm_dtype)
    p_dp = d_out_v * scores
    dgc = jnp.sum(p_dp, axis=1, keepdims=True) + gate_out
    dgc_row = -jnp.sum(p_dp, axis=0, keepdims=True)

    # End state S' = exp(gc_last) S + (to_end * k)^T v_new.
    dk_ = dk_ + d_k_to_end * to_end
    through_end = jnp.sum(k * to_end * d_k_to_end, axis=1, keepdims=True)
    dgc = dgc - through_end
    d_gc_last = jnp.exp(gc_last) * state_d_next + jnp.sum(through_end, axis=0, keepdims=True)

    # v_new = u - w S with w = Tm (beta gamma k), u = Tm (beta v).
    x_w = k * (beta * gamma)
    d_xw = mm_tn(tm, d_w, mm_dtype)
    d_tm = mm_nt(d_w, x_w, mm_dtype) + d_tm_u
    k_dxw = jnp.sum(k * d_xw, axis=1, keepdims=True)
    dbeta = dbeta + gamma * k_dxw
    dk_ = dk_ + (beta * gamma) * d_xw
    dgc = dgc + beta * gamma * k_dxw

    # Tm = (I + L)^-1, L = strictly_lower(beta k k^T * D).
    d_lower = strictly_lower(-mm_tn(tm, mm_nt(d_tm, tm, precision=inv_precision),
                                    precision=inv_precision))  # -(Tm^T dTm Tm^T), float32
    gram = mm_nt(k, k, mm_dtype)
    dbeta = dbeta + jnp.sum(d_lower * gram * decay, axis=1, keepdims=True)
    d_gram = beta * d_lower * decay
    dk_ = dk_ + mm(d_gram, k, mm_dtype) + mm_tn(d_gram, k, mm_dtype)
    l_dl = d_lower * lower
    dgc = dgc + jnp.sum(l_dl, axis=1, keepdims=True)
    dgc_row = dgc_row - jnp.sum(l_dl, axis=0, keepdims=True)

    ids = jax.lax.broadcasted_iota(jnp.int32, gc.shape, 0)
    dgc = dgc + row_to_column(dgc_row) + jnp.where(ids == c - 1, d_gc_last, 0.0)
    return dqs * scale, dk_, dbeta, dgc
