"""The gated Hebbian rule in chunk form, in plain JAX.

The sequence is cut into chunks of C tokens. Inside a chunk, with G_t the cumulative log decay
(G_t = g_1 + ... + g_t, chunk-local) and S the state at the chunk's start, the recurrence of
`reference.py` unrolls to

    S_t = exp(G_t) S + sum_{j <= t} exp(G_t - G_j) beta_j k_j v_j^T

The write vectors are beta_j v_j themselves (no delta correction), so unlike the delta rule no
triangular solve is needed and everything is matrix products:

    o      = scale exp(G) q S + P (beta v),   P_tj = scale exp(G_t - G_j) (q_t . k_j), j <= t
    S_next = exp(G_C) S + (exp(G_C - G) k)^T (beta v)

All chunk quantities (the intra-chunk outputs P (beta v), the decayed q and k) are computed for
every chunk at once, outside the loop; `lax.scan` over chunks then carries only the float32 state
S, computing o and S_next.

Decays are only ever exponentiated as differences G_t - G_j with j <= t (<= 0 because g <= 0), and
masked entries are replaced before `exp` (and again after, so their gradient is exactly zero), so
very negative gates give finite values and gradients.
"""
import jax
import jax.numpy as jnp

from sleep_jax.ops.chunks import causal_decays, from_grouped_chunks, grouped_chunks, mm


def chunked_gated_hebbian_rule(q, k, v, g, beta, *, scale, initial_state, chunk_size=64):
    """Chunk form of the gated Hebbian rule: arguments and results as `recurrent_gated_hebbian_rule`'s,
    with `chunk_size` tokens per chunk (a power of two; `ops.chunks` pads T to whole chunks)."""
    T = q.shape[1]
    # [N, B, H, G (1 for q, k), C, ...]
    q, k, v, g, beta = grouped_chunks("chunked_gated_hebbian_rule", q, k, v, g, beta, chunk_size)

    # Per-chunk quantities, for all chunks at once.
    G, decay = causal_decays(g)                                          # exp(G_t - G_j), j <= t
    G_last = G[..., -1:]
    u = beta[..., None] * v  # write vectors: [N, B, H, G, C, V]
    P = scale * decay * mm("...tk,...jk->...tj", q, k)  # intra-chunk attention, causal
    o_intra = mm("...tj,...jv->...tv", P, u)
    q_decayed = (scale * jnp.exp(G))[..., None] * q  # reads the chunk's start state
    k_to_end = jnp.exp(G_last - G)[..., None] * k  # writes into the chunk's end state
    chunk_decay = jnp.exp(G_last)[..., None]  # [N, B, H, G, 1, 1]

    def advance(state, chunk):
        """One chunk: outputs, and the state at the chunk's end."""
        o_n, u_n, q_n, k_n, decay_n = chunk
        o = mm("...ck,...kv->...cv", q_n, state) + o_n
        state = decay_n * state + mm("...ck,...cv->...kv", k_n, u_n)
        return state, o

    state = initial_state.astype(jnp.float32).reshape(*v.shape[1:4], *initial_state.shape[2:])   # [B, H, G, K, V]
    final_state, o = jax.lax.scan(advance, state, (o_intra, u, q_decayed, k_to_end, chunk_decay))
    return from_grouped_chunks(o, T), final_state.reshape(initial_state.shape)
