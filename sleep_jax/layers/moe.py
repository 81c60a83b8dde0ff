"""Sparse mixture of SwiGLU experts with a gated shared expert (Qwen3-Next), dense dispatch.

    p      = softmax(x W_router)                      [..., E] float32
    w      = top-k of p (renormalised to sum 1 if `normalize_top_k`), 0 for the other experts
    y      = sum_e w_e * SwiGLU_e(x) + sigmoid(x W_shared_gate) * SwiGLU_shared(x)

Every expert runs on every token (dense dispatch): exact, and simple to shard; the cost is E / k
times the routed compute, fine for tests and small models.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.layers.common import dense_param
from sleep_jax.layers.mlp import SwiGLU


class SparseMoE(nnx.Module):
    def __init__(self, d_model: int, *, experts: int, top_k: int, hidden: int, shared_hidden: int,
                 normalize_top_k: bool, dtype, param_dtype, rngs: nnx.Rngs):
        if not 0 < top_k <= experts:
            raise ValueError(f"model.moe_top_k={top_k} must be in [1, model.moe_experts={experts}]")
        dense = lambda shape, axes, fan_in: dense_param(rngs, shape, axes, fan_in=fan_in, dtype=param_dtype)
        self.w_router = dense((d_model, experts), ("embed", None), d_model)
        self.w_gate = dense((experts, d_model, hidden), (None, "embed", "mlp"), d_model)
        self.w_up = dense((experts, d_model, hidden), (None, "embed", "mlp"), d_model)
        self.w_down = dense((experts, hidden, d_model), (None, "mlp", "embed"), hidden)
        self.shared = SwiGLU(d_model, shared_hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.w_shared_gate = dense((d_model, 1), ("embed", None), d_model)
        self.top_k, self.normalize_top_k = top_k, normalize_top_k
        self.dtype = dtype

    def routing_weights(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> float32 [..., E]: the top-k router probabilities, zero elsewhere."""
        probs = jax.nn.softmax((x @ self.w_router[...].astype(self.dtype)).astype(jnp.float32), axis=-1)
        top, index = jax.lax.top_k(probs, self.top_k)
        if self.normalize_top_k:
            top = top / jnp.sum(top, axis=-1, keepdims=True)
        return jnp.sum(jax.nn.one_hot(index, probs.shape[-1], dtype=jnp.float32) * top[..., None], axis=-2)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., D] in the compute dtype."""
        x = x.astype(self.dtype)
        w = lambda p: p[...].astype(self.dtype)
        gate = jnp.einsum("...d,edf->...ef", x, w(self.w_gate))
        up = jnp.einsum("...d,edf->...ef", x, w(self.w_up))
        experts = jnp.einsum("...ef,efd->...ed", jax.nn.silu(gate) * up, w(self.w_down))
        routed = jnp.einsum("...e,...ed->...d", self.routing_weights(x).astype(self.dtype), experts)
        return routed + jax.nn.sigmoid(x @ w(self.w_shared_gate)) * self.shared(x)
