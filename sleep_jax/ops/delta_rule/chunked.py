"""The gated delta rule in chunk form (WY / UT transform), in plain JAX.

The sequence is cut into chunks of C tokens. Inside a chunk, with G_t the cumulative log decay
(G_t = g_1 + ... + g_t, chunk-local) and S the state at the chunk's start, the recurrence of
`reference.py` unrolls to

    S_t = exp(G_t) S + sum_{j <= t} exp(G_t - G_j) k_j u_j^T
    u_t = beta_t (v_t - exp(G_t) S^T k_t - sum_{j < t} exp(G_t - G_j) (k_t . k_j) u_j)

so the write vectors u solve a unit-lower-triangular system (I + A) u = beta (v - exp(G) k S),
A_tj = beta_t exp(G_t - G_j) (k_t . k_j) for j < t. Solving it once per chunk gives

    u = U - W S,    U = (I + A)^-1 beta v,    W = (I + A)^-1 beta exp(G) k

and everything else is matrix products:

    o      = scale exp(G) q S + P u,          P_tj = scale exp(G_t - G_j) (q_t . k_j), j <= t
    S_next = exp(G_C) S + (exp(G_C - G) k)^T u

All chunk quantities (U, W, P, the decayed q and k) are computed for every chunk at once, outside
the loop; `lax.scan` over chunks then carries only the float32 state S, computing u, o and S_next.

Decays are only ever exponentiated as differences G_t - G_j with j <= t (<= 0 because g <= 0), and
masked entries are replaced before `exp` (and again after, so their gradient is exactly zero), so
very negative gates give finite values and gradients.
"""
import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(spec, *operands):
    """float32 einsum at full precision (no TF32 / bf16 passes on accelerators)."""
    return jnp.einsum(spec, *operands, precision=_HIGHEST)


def _masked_decay(G, mask):
    """exp(G_t - G_j) where mask[t, j], else 0.  G: [..., C] -> [..., C, C].

    The inner `where` keeps the argument of `exp` at 0 off the mask (no overflow, finite gradient);
    the outer one zeroes those entries.
    """
    diff = G[..., :, None] - G[..., None, :]
    return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)


@jax.custom_jvp
def _invert_unit_lower(A):
    """(I + A)^-1 for strictly lower-triangular A: [..., C, C] -> [..., C, C].

    Forward substitution, all matrices of the batch at once: row i of the inverse T is
    e_i - A[i] T, which reads only rows < i (A is strictly lower), so filling the rows in order
    needs C - 1 small steps. Its derivative is the closed form d(T) = -T dA T (see below), so
    autodiff never unrolls or stores the loop.
    """
    C = A.shape[-1]
    identity = jnp.zeros_like(A) + jnp.eye(C, dtype=A.dtype)

    def fill_row(i, inverse):
        row = jax.lax.dynamic_index_in_dim(inverse, i, axis=-2, keepdims=False)
        a_i = jax.lax.dynamic_index_in_dim(A, i, axis=-2, keepdims=False)
        row = row - _mm("...j,...jc->...c", a_i, inverse)
        return jax.lax.dynamic_update_index_in_dim(inverse, row, i, axis=-2)

    return jax.lax.fori_loop(1, C, fill_row, identity)


@_invert_unit_lower.defjvp
def _invert_unit_lower_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    inverse = _invert_unit_lower(A)
    return inverse, -_mm("...ij,...jk,...kl->...il", inverse, dA, inverse)


def _to_chunks(x, num_chunks, chunk_size):
    """[B, T, H, ...] -> [num_chunks, B, H, chunk_size, ...] (T already padded)."""
    B, _, H = x.shape[:3]
    x = x.reshape(B, num_chunks, chunk_size, H, *x.shape[3:])
    return jnp.moveaxis(x, (1, 3), (0, 2))


def _from_chunks(x, length):
    """[num_chunks, B, H, chunk_size, ...] -> [B, length, H, ...] (drops the padding)."""
    N, B, H, C = x.shape[:4]
    x = jnp.moveaxis(x, (0, 2), (1, 3)).reshape(B, N * C, H, *x.shape[4:])
    return x[:, :length]


def chunked_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, chunk_size=64):
    """Chunk form of the gated delta rule; same convention as `recurrent_gated_delta_rule`.

    Args:
      q, k: [B, T, H, K] key heads.  v: [B, T, HV, V], HV a multiple of H: value head h reads key
        head h // (HV // H), through a group axis (q, k are never copied per value head).  g, beta: [B, T, HV] (g <= 0: log forget gate).  Any float dtype.
      scale: multiplier of q.  initial_state: [B, HV, K, V].
      chunk_size: tokens per chunk, a power of two (the public entry point allows 16, 32, 64).
    Returns:
      (o [B, T, HV, V] float32, final state [B, HV, K, V] float32).
    Any T >= 1: the sequence is padded to whole chunks with g = 0, beta = 0 (which leaves the
    state unchanged) and the outputs are cut back to T. All arithmetic is float32.
    """
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunked_gated_delta_rule: `chunk_size`={chunk_size} must be a power of two")
    f32 = jnp.float32
    T = q.shape[1]
    C = chunk_size
    num_chunks = -(-T // C)
    pad = num_chunks * C - T
    B, _, H, _ = q.shape
    HV = v.shape[2]
    q, k, v, g, beta = (
        _to_chunks(jnp.pad(x.astype(f32), [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)), num_chunks, C)
        for x in (q, k, v, g, beta))  # [N, B, H or HV, C, D] and [N, B, HV, C]
    # Group axis: key-head arrays get a broadcast axis of 1, value-head arrays split HV = H x G.
    q, k = q[:, :, :, None], k[:, :, :, None]                            # [N, B, H, 1, C, K]
    v, g, beta = (x.reshape(num_chunks, B, H, HV // H, *x.shape[3:]) for x in (v, g, beta))

    # Per-chunk quantities, for all chunks at once.
    G = jnp.cumsum(g, axis=-1)
    G_last = G[..., -1:]
    rows, cols = jnp.arange(C)[:, None], jnp.arange(C)[None, :]
    decay = _masked_decay(G, rows >= cols)  # exp(G_t - G_j), j <= t: [N, B, H, G, C, C]
    strict_decay = jnp.where(rows > cols, decay, 0.0)
    A = beta[..., None] * strict_decay * _mm("...tk,...jk->...tj", k, k)
    rhs = beta[..., None] * jnp.concatenate([v, jnp.exp(G)[..., None] * k], axis=-1)
    UW = _mm("...tj,...jd->...td", _invert_unit_lower(A), rhs)
    U, W = UW[..., :v.shape[-1]], UW[..., v.shape[-1]:]  # u = U - W S
    P = scale * decay * _mm("...tk,...jk->...tj", q, k)  # intra-chunk attention, causal
    q_decayed = (scale * jnp.exp(G))[..., None] * q  # reads the chunk's start state
    k_to_end = jnp.exp(G_last - G)[..., None] * k  # writes into the chunk's end state
    chunk_decay = jnp.exp(G_last)[..., None]  # [N, B, H, G, 1, 1]

    def advance(state, chunk):
        """One chunk: write vectors, outputs, and the state at the chunk's end."""
        U_n, W_n, P_n, q_n, k_n, decay_n = chunk
        u = U_n - _mm("...ck,...kv->...cv", W_n, state)
        o = _mm("...ck,...kv->...cv", q_n, state) + _mm("...tj,...jv->...tv", P_n, u)
        state = decay_n * state + _mm("...ck,...cv->...kv", k_n, u)
        return state, o

    state = initial_state.astype(f32).reshape(B, H, HV // H, *initial_state.shape[2:])
    final_state, o = jax.lax.scan(advance, state, (U, W, P, q_decayed, k_to_end, chunk_decay))
    o = o.reshape(num_chunks, B, HV, *o.shape[4:])
    return _from_chunks(o, T), final_state.reshape(initial_state.shape)
