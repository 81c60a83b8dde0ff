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


def _dot(a, b, contract, mm_dtype):
    a = a.astype(mm_dtype)
    b = b.astype(mm_dtype)
    precision = _HIGHEST if mm_dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                               preferred_element_type=_F32)


def mm(a, b, mm_dtype=_F32):
    """a @ b with operands cast to `mm_dtype`, float32 accumulation and result."""
    return _dot(a, b, ((1,), (0,)), mm_dtype)


def mm_tn(a, b, mm_dtype=_F32):
    """a^T @ b (contracts the first axis of both)."""
    return _dot(a, b, ((0,), (0,)), mm_dtype)


def mm_nt(a, b, mm_dtype=_F32):
    """a @ b^T (contracts the last axis of both)."""
    return _dot(a, b, ((1,), (1,)), mm_dtype)


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


def unit_lower_inverse(lower):
    """(I + L)^-1 for a strictly lower triangular L [C, C] (C a power of two), float32.

    Block doubling: T_1 = I is the inverse of the 1x1 diagonal blocks of I + L. Given T_b, the
    exact inverse of the b x b diagonal blocks, the 2b x 2b diagonal blocks' inverse is
    T_2b = T_b - T_b L_b T_b, where L_b keeps the entries of L that couple the two b-halves of each
    2b block (standard block forward substitution, so as stable as it). log2(C) levels of two
    C x C matmuls each, all in float32.
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
        inverse = inverse - mm(inverse, mm(lower_b, inverse))
        level += 1
    return inverse


def wy_factors(k, v, beta, gc, mm_dtype):
    """Intra-chunk preparation: (w [C, K], u [C, V]) float32 and the pieces the backward reuses.

    k [C, K], v [C, V] (input dtype); beta, gc [C, 1] float32.
    Returns (w, u, tm, lower) with tm = (I + L)^-1 and lower = L.
    """
    d = decay_matrix(gc)
    lower = strictly_lower(beta * mm_nt(k, k, mm_dtype) * d)
    tm = unit_lower_inverse(lower)
    w = mm(tm, k.astype(_F32) * (beta * jnp.exp(gc)), mm_dtype)
    u = mm(tm, v.astype(_F32) * beta, mm_dtype)
    return w, u, tm, lower


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


def chunk_gradients(q, k, v, beta, gc, state, d_next, v_new, d_v_new, d_o, scale, mm_dtype):
    """Gradients of one chunk's inputs, given its start state and the gradients the reverse
    recurrence left (the state recurrence itself is differentiated in `reverse_state_step`).

    q, k [C, K]; v, v_new, d_v_new, d_o [C, V]; beta, gc [C, 1]; state (start), d_next (gradient
    of the end state) [K, V] float32. Returns float32 (dq [C, K], dk [C, K], dv [C, V],
    dbeta [C, 1], dgc [C, 1]).
    """
    f32 = _F32
    q, k, v = q.astype(f32), k.astype(f32), v.astype(f32)
    qs = q * scale
    decay = decay_matrix(gc)
    gamma = jnp.exp(gc)
    gc_last = last_entry(gc)
    to_end = jnp.exp(gc_last - gc)

    # Output o = gamma * qs S + (qs k^T * D) v_new.
    scores = mm_nt(qs, k, mm_dtype) * decay                  # P
    d_scores = mm_nt(d_o, v_new, mm_dtype) * decay           # dP * D (causal through D)
    dqs = gamma * mm_nt(d_o, state, mm_dtype) + mm(d_scores, k, mm_dtype)
    dk = mm_tn(d_scores, qs, mm_dtype)
    p_dp = mm_nt(d_o, v_new, mm_dtype) * scores
    dgc = (jnp.sum(p_dp, axis=1, keepdims=True)
           + jnp.sum(d_o.astype(f32) * mm(qs * gamma, state, mm_dtype), axis=1, keepdims=True))
    dgc_row = -jnp.sum(p_dp, axis=0, keepdims=True)

    # End state S' = exp(gc_last) S + (to_end * k)^T v_new.
    d_k_to_end = mm_nt(v_new, d_next, mm_dtype)             # [C, K]
    dk = dk + d_k_to_end * to_end
    through_end = jnp.sum(k * to_end * d_k_to_end, axis=1, keepdims=True)
    dgc = dgc - through_end
    d_gc_last = (jnp.exp(gc_last) * jnp.sum(jnp.sum(state * d_next, axis=1, keepdims=True),
                                            axis=0, keepdims=True)
                 + jnp.sum(through_end, axis=0, keepdims=True))

    # v_new = u - w S, w = Tm (beta gamma k), u = Tm (beta v).
    _, _, tm, lower = wy_factors(k, v, beta, gc, mm_dtype)
    d_w = -mm_nt(d_v_new, state, mm_dtype)                  # [C, K]
    d_xw = mm_tn(tm, d_w, mm_dtype)
    d_xu = mm_tn(tm, d_v_new, mm_dtype)
    x_w = k * (beta * gamma)
    x_u = v * beta
    d_tm = mm_nt(d_w, x_w, mm_dtype) + mm_nt(d_v_new, x_u, mm_dtype)
    dv = beta * d_xu
    k_dxw = jnp.sum(k * d_xw, axis=1, keepdims=True)
    dbeta = jnp.sum(v * d_xu, axis=1, keepdims=True) + gamma * k_dxw
    dk = dk + (beta * gamma) * d_xw
    dgc = dgc + beta * gamma * k_dxw

    # Tm = (I + L)^-1, L = strictly_lower(beta k k^T * D).
    d_lower = strictly_lower(-mm_tn(tm, mm_nt(d_tm, tm)))  # -(Tm^T dTm Tm^T), float32
    gram = mm_nt(k, k, mm_dtype)
    dbeta = dbeta + jnp.sum(d_lower * gram * decay, axis=1, keepdims=True)
    d_gram = beta * d_lower * decay
    dk = dk + mm(d_gram, k, mm_dtype) + mm_tn(d_gram, k, mm_dtype)
    l_dl = d_lower * lower
    dgc = dgc + jnp.sum(l_dl, axis=1, keepdims=True)
    dgc_row = dgc_row - jnp.sum(l_dl, axis=0, keepdims=True)

    ids = jax.lax.broadcasted_iota(jnp.int32, gc.shape, 0)
    dgc = dgc + row_to_column(dgc_row) + jnp.where(ids == gc.shape[0] - 1, d_gc_last, 0.0)
    return dqs * scale, dk, dv, dbeta, dgc
