"""SwiGLU feed-forward: down(silu(x W_gate) * (x W_up))."""
import jax
from flax import nnx

from sleep_jax.layers.common import dense, dense_param


class SwiGLU(nnx.Module):
    def __init__(self, d_model: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.w_gate = dense_param(rngs, (d_model, hidden), ("embed", "mlp"), fan_in=d_model, dtype=param_dtype)
        self.w_up = dense_param(rngs, (d_model, hidden), ("embed", "mlp"), fan_in=d_model, dtype=param_dtype)
        self.w_down = dense_param(rngs, (hidden, d_model), ("mlp", "embed"), fan_in=hidden, dtype=param_dtype)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., D] in the compute dtype."""
        x = x.astype(self.dtype)
        gate = dense(x, self.w_gate[...].astype(self.dtype))
        up = dense(x, self.w_up[...].astype(self.dtype))
        return dense(jax.nn.silu(gate) * up, self.w_down[...].astype(self.dtype))
