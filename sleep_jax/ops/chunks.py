"""What the chunked forms of the fast-weight ops share: the float32 full-precision einsum, masked
decays, and cutting a sequence into chunks over grouped value heads (and back).

A chunked form pads T to whole chunks with g = 0, beta = 0 (the state passes through unchanged)
and works on arrays [N, B, H, G, C, ...]: N chunks of C tokens, H key heads, G = HV // H value heads
per key head (q and k carry a broadcast G axis of 1, so they are never copied per value head).
"""
import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def mm(spec, *operands):
    """float32 einsum at full precision (no TF32 / bf16 passes on accelerators)."""
    return jnp.einsum(spec, *operands, precision=_HIGHEST)


@jax.custom_jvp
def scale_rows(weights, x):
    """weights[..., None] * x: weights [..., T], x [..., T, D] -> [..., T, D].

    Its derivative in `weights` is written as an einsum, so the backward's sum over D is a dot:
    XLA's CPU backend (jax 0.10) runs a fused multiply + reduce over the last axis as a YNNPACK
    reduce ~50x slower than the same sum as a dot (--xla_cpu_experimental_ynn_fusion_type)."""
    return weights[..., None] * x


@scale_rows.defjvp
def _scale_rows_jvp(primals, tangents):
    (weights, x), (d_weights, dx) = primals, tangents
    return scale_rows(weights, x), mm("...t,...td->...td", d_weights, x) + weights[..., None] * dx


def masked_decay(G, mask):
    """exp(G_t - G_j) where mask[t, j], else 0.  G: [..., C] -> [..., C, C].

    The inner `where` keeps the argument of `exp` at 0 off the mask (no overflow, finite gradient);
    the outer one zeroes those entries.
    """
    diff = G[..., :, None] - G[..., None, :]
    return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)


def _to_chunks(x, num_chunks, chunk_size):
    """[B, T, H, ...] -> [num_chunks, B, H, chunk_size, ...] (T already padded)."""
    B, _, H = x.shape[:3]
    x = x.reshape(B, num_chunks, chunk_size, H, *x.shape[3:])
    return jnp.moveaxis(x, (1, 3), (0, 2))


def grouped_chunks(where: str, q, k, v, g, beta, chunk_size: int):
    """float32 chunks of the inputs: q, k [N, B, H, 1, C, K]; v [N, B, H, G, C, V]; g, beta
    [N, B, H, G, C] (T padded to N whole chunks with g = 0, beta = 0). `chunk_size` C must be a
    power of two (the error starts with the op's name `where`)."""
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"{where}: `chunk_size`={chunk_size} must be a power of two")
    T, H, HV = q.shape[1], q.shape[2], v.shape[2]
    num_chunks = -(-T // chunk_size)
    pad = num_chunks * chunk_size - T
    q, k, v, g, beta = (
        _to_chunks(jnp.pad(x.astype(jnp.float32), [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)), num_chunks,
                   chunk_size)
        for x in (q, k, v, g, beta))                                     # [N, B, H or HV, C, ...]
    q, k = q[:, :, :, None], k[:, :, :, None]
    v, g, beta = (x.reshape(*x.shape[:2], H, HV // H, *x.shape[3:]) for x in (v, g, beta))
    return q, k, v, g, beta


def causal_decays(g):
    """The chunk-local cumulative log decay G = cumsum(g) [..., C] and exp(G_t - G_j) for j <= t
    (0 above the diagonal) [..., C, C]."""
    G = jnp.cumsum(g, axis=-1)
    causal = jnp.arange(G.shape[-1])[:, None] >= jnp.arange(G.shape[-1])[None, :]
    return G, masked_decay(G, causal)


def from_grouped_chunks(o, length: int):
    """Outputs [N, B, H, G, C, V] -> [B, length, HV, V] (the padding dropped)."""
    N, B, H, G, C = o.shape[:5]
    o = jnp.moveaxis(o.reshape(N, B, H * G, C, *o.shape[5:]), (0, 2), (1, 3))
    return o.reshape(B, N * C, H * G, *o.shape[4:])[:, :length]
