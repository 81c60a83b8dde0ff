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

U and W come from one `solve_unit_lower` on [beta v, beta exp(G) k] (block forward substitution; the
inverse is never formed). All chunk quantities (U, W, P, the decayed q and k) are computed for every
chunk at once, outside the loop; `lax.scan` over chunks then carries only the float32 state S,
computing u, o and S_next.

Decays are only ever exponentiated as differences G_t - G_j with j <= t (<= 0 because g <= 0), and
masked entries are replaced before `exp` (and again after, so their gradient is exactly zero), so
very negative gates give finite values and gradients.
"""
import jax
import jax.numpy as jnp

from sleep_jax.ops.chunks import causal_decays, from_grouped_chunks, grouped_chunks, mm, scale_rows


DIAGONAL_BLOCK = 16  # rows of the diagonal blocks inverted by forward substitution in `solve_unit_lower`


def _invert_unit_lower(A):
    """(I + A)^-1 for strictly lower-triangular A: [..., b, b] -> [..., b, b].

    Forward substitution, all matrices of the batch at once: row i of the inverse T is
    e_i - A[i] T, which reads only rows < i (A is strictly lower), so filling the rows in order
    needs b - 1 small steps. Only ever called on primal values (see `solve_unit_lower`).
    """
    b = A.shape[-1]
    identity = jnp.zeros_like(A) + jnp.eye(b, dtype=A.dtype)

    def fill_row(i, inverse):
        row = jax.lax.dynamic_index_in_dim(inverse, i, axis=-2, keepdims=False)
        a_i = jax.lax.dynamic_index_in_dim(A, i, axis=-2, keepdims=False)
        row = row - mm("...j,...jc->...c", a_i, inverse)
        return jax.lax.dynamic_update_index_in_dim(inverse, row, i, axis=-2)

    return jax.lax.fori_loop(1, b, fill_row, identity)


def _diagonal_inverses(A):
    """(I + D_i)^-1 of the diagonal blocks D_i of A [..., C, C]: [..., C // b, b, b], b = the
    smaller of DIAGONAL_BLOCK and C."""
    b = min(DIAGONAL_BLOCK, A.shape[-1])
    blocks = [A[..., i:i + b, i:i + b] for i in range(0, A.shape[-1], b)]
    return _invert_unit_lower(jnp.stack(blocks, axis=-3))


def _substitute(A, inverses, R):
    """X with (I + A) X = R by block forward substitution, X_i = (I + D_i)^-1 (R_i - A_i,<i X_<i),
    one block row of b = inverses.shape[-1] rows at a time. Linear in R, and written with `split`
    and `concatenate` only (no slices of R), so its transpose (the backward) needs no padding.
    A: [..., C, C] strictly lower.  inverses: `_diagonal_inverses(A)`.  R: [..., C, D] -> [..., C, D]."""
    b = inverses.shape[-1]
    rows = []
    for i, r in enumerate(jnp.split(R, A.shape[-1] // b, axis=-2)):
        if rows:
            solved = rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=-2)
            r = r - mm("...ij,...jd->...id", A[..., i * b:(i + 1) * b, :i * b], solved)
        rows.append(mm("...ij,...jd->...id", inverses[..., i, :, :], r))
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=-2)


@jax.custom_jvp
def solve_unit_lower(A, R):
    """X = (I + A)^-1 R for strictly lower-triangular A (entries on and above the diagonal must be
    zero): A [..., C, C], R [..., C, D] -> [..., C, D].

    Never forms the inverse: the diagonal blocks are inverted by forward substitution (b - 1 steps)
    and the rest is block forward substitution on R (matrix products). The derivative is the
    closed form dX = (I + A)^-1 (dR - dA X), so the backward is the transposed block substitution
    (R_bar = (I + A)^-T X_bar) and A_bar = -R_bar X^T: no loop is unrolled or stored.
    """
    return _substitute(A, _diagonal_inverses(A), R)


@solve_unit_lower.defjvp
def _solve_unit_lower_jvp(primals, tangents):
    (A, R), (dA, dR) = primals, tangents
    inverses = _diagonal_inverses(A)
    X = _substitute(A, inverses, R)
    return X, _substitute(A, inverses, dR - mm("...ij,...jd->...id", dA, X))


def chunked_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, chunk_size=64):
    """Chunk form of the gated delta rule; same convention as `recurrent_gated_delta_rule`.

    Args:
      q, k: [B, T, H, K] key heads.  v: [B, T, HV, V], HV a multiple of H: value head h reads key
        head h // (HV // H), through a group axis (q, k are never copied per value head).
      g, beta: [B, T, HV] (g <= 0: log forget gate).  Any float dtype.
      scale: multiplier of q.  initial_state: [B, HV, K, V].
      chunk_size: tokens per chunk, a power of two (the public entry point allows 16, 32, 64).
    Returns:
      (o [B, T, HV, V] float32, final state [B, HV, K, V] float32).
    Any T >= 1: the sequence is padded to whole chunks with g = 0, beta = 0 (which leaves the
    state unchanged) and the outputs are cut back to T. All arithmetic is float32.
    """
    T = q.shape[1]
    # [N, B, H, G (1 for q, k), C, ...]
    q, k, v, g, beta = grouped_chunks("chunked_gated_delta_rule", q, k, v, g, beta, chunk_size)

    # Per-chunk quantities, for all chunks at once.
    G, decay = causal_decays(g)                                          # exp(G_t - G_j), j <= t
    G_last = G[..., -1:]
    strict_decay = decay * (1.0 - jnp.eye(decay.shape[-1], dtype=decay.dtype))   # j < t
    A = scale_rows(beta, strict_decay * mm("...tk,...jk->...tj", k, k))
    rhs = scale_rows(beta, jnp.concatenate([v, jnp.exp(G)[..., None] * k], axis=-1))
    UW = solve_unit_lower(A, rhs)
    U, W = UW[..., :v.shape[-1]], UW[..., v.shape[-1]:]  # u = U - W S
    P = scale * decay * mm("...tk,...jk->...tj", q, k)  # intra-chunk attention, causal
    q_decayed = (scale * jnp.exp(G))[..., None] * q  # reads the chunk's start state
    k_to_end = jnp.exp(G_last - G)[..., None] * k  # writes into the chunk's end state
    chunk_decay = jnp.exp(G_last)[..., None]  # [N, B, H, G, 1, 1]

    def advance(state, chunk):
        """One chunk: write vectors, outputs, and the state at the chunk's end."""
        U_n, W_n, P_n, q_n, k_n, decay_n = chunk
        u = U_n - mm("...ck,...kv->...cv", W_n, state)
        o = mm("...ck,...kv->...cv", q_n, state) + mm("...tj,...jv->...tv", P_n, u)
        state = decay_n * state + mm("...ck,...cv->...kv", k_n, u)
        return state, o

    state = initial_state.astype(jnp.float32).reshape(*v.shape[1:4], *initial_state.shape[2:])   # [B, H, G, K, V]
    final_state, o = jax.lax.scan(advance, state, (U, W, P, q_decayed, k_to_end, chunk_decay))
    return from_grouped_chunks(o, T), final_state.reshape(initial_state.shape)
