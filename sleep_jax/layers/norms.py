"""RMSNorm, and the L2 normalisation used for GDN queries and keys."""
import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.layers.common import make_param


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) over the last axis, computed in float32, returned in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / ||x|| over the last axis (float32 math, result in x.dtype)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


NORM_STYLES = ("plain", "zero_centred")


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis with a learned scale.

    `style`: "plain" multiplies by the weight w (initialised to 1); "zero_centred" by (1 + w), w
    initialised to 0 (Qwen3.5 / Qwen3-Next). `logical_axis` names the normalised dimension
    (e.g. "embed", or "head_dim" for per-head norms).
    """

    def __init__(self, dim: int, *, logical_axis: str, eps: float, dtype, param_dtype, style: str = "plain"):
        if style not in NORM_STYLES:
            raise ValueError(f"model.norm_style={style!r} must be one of {NORM_STYLES}")
        self.scale = make_param(jnp.full((dim,), 0.0 if style == "zero_centred" else 1.0, param_dtype),
                                (logical_axis,))
        self.offset = 1.0 if style == "zero_centred" else 0.0
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., dim] -> same shape, in the compute dtype."""
        scale = self.scale[...].astype(jnp.float32) + self.offset
        return (rms_normalize(x, self.eps) * scale).astype(self.dtype)
