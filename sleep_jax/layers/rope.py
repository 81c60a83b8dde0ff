"""Rotary position embedding on absolute token positions (half-split / NeoX layout)."""
import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, theta: float, rotary_dim: int | None = None) -> jax.Array:
    """Rotate the first `rotary_dim` (default all, even) channels of x [B, T, H, Dh] by angles
    positions [T] * theta^(-2i/rotary_dim); the other channels pass through (partial rotary).

    Positions are absolute token indices in the sequence; they keep counting across windows.
    """
    d = x.shape[-1] if rotary_dim is None else rotary_dim
    if d % 2 or not 0 < d <= x.shape[-1]:
        raise ValueError(f"apply_rope: rotary dim must be even and in (0, {x.shape[-1]}], got {d}")
    if d < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :d], positions, theta), x[..., d:]], axis=-1)
    inv_freq = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)          # [D/2]
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]        # [T, D/2]
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
