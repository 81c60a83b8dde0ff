"""The JetBlock mixer (Jet-Nemotron, NVlabs): GDN's delta rule with a dynamic conv on the values.

    q, k    = SiLU(x W_q), SiLU(x W_k), L2-normalised per head           (no conv)
    kernel  = (SiLU(x W_gen1) W_gen2 + b_gen2)                           [B, T, HV, V, W]: one causal
                                                                         conv kernel per token and channel
    v       = SiLU(sum_j kernel_t[..., j] * (x W_v)_{t-(W-1)+j})        dynamic causal conv of the values
    beta, g = as in GDN (sigmoid(x W_beta); -exp(A_log) * softplus(x W_a + dt_bias))
    o, S    = gated_delta_rule(q, k, v, g, beta, S)
    y       = (RMSNorm(o) * SiLU(x W_z)) W_o

The published code (jetai/modeling/hf/dynamic_conv.py) flattens the generator output as (d w) with
the tap index w innermost; W_gen2 [R, HV, V, W] and b_gen2 [HV, V, W] keep that order. Its decode
cache holds the last W value inputs, but the oldest is rolled out before the sum, so only W-1 are
needed: the recurrent state is GDN's, {"S": [B, HV, K, V] float32, "conv": [B, W-1, HV*V]}, and
crosses windows and passes exactly as a GDN layer's does. Every span, not only the first, reads
the tail it is given (the published `_forward_naive` ignores an existing cache; its Triton cache
path does not), so a sequence read in pieces equals the sequence read whole.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.layers.common import dense_param, make_param
from sleep_jax.layers.gdn import DeltaRuleMixer, decay_params
from sleep_jax.layers.norms import RMSNorm, l2_normalize


def dynamic_causal_conv(x: jax.Array, kernels: jax.Array, tail: jax.Array):
    """Causal conv of x [B, T, C] with per-token kernels [B, T, C, W] after the previous inputs tail [B, W-1, C].

    y[t] = sum_j kernels[t, :, j] * x[t - (W-1) + j]. Returns (y [B, T, C], new tail [B, W-1, C]:
    the last W-1 inputs, taken from `tail` too when T < W-1).
    """
    width = kernels.shape[-1]
    steps = x.shape[1]
    padded = jnp.concatenate([tail.astype(x.dtype), x], axis=1)               # [B, T+W-1, C]
    y = sum(padded[:, j:j + steps] * kernels[..., j] for j in range(width))
    return y, padded[:, steps:]


class JetMixer(DeltaRuleMixer):
    """JetBlock mixer; shares GDN's state layout, gates, gated output norm and the window / one-token
    forms (`DeltaRuleMixer`); its own part is `_qkv`.

    `heads` key and value heads (as published: HV = H), `head_dim` K, `v_head_dim` V,
    `conv_kernel` W taps, generator hidden width R = H*V // generator_reduction.
    """

    def __init__(self, d_model: int, *, heads: int, head_dim: int, v_head_dim: int, conv_kernel: int,
                 generator_reduction: int, norm_eps: float, impl: str, chunk_size: int, dtype, param_dtype,
                 rngs: nnx.Rngs):
        channels = heads * v_head_dim
        hidden = channels // generator_reduction      # >= 1: checked by ModelConfig
        dense = lambda shape, axes, fan_in: dense_param(rngs, shape, axes, fan_in=fan_in, dtype=param_dtype)
        self.w_q = dense((d_model, heads, head_dim), ("embed", "heads", "head_dim"), d_model)
        self.w_k = dense((d_model, heads, head_dim), ("embed", "heads", "head_dim"), d_model)
        self.w_v = dense((d_model, heads, v_head_dim), ("embed", "heads", "head_dim"), d_model)
        self.w_z = dense((d_model, heads, v_head_dim), ("embed", "heads", "head_dim"), d_model)
        self.w_beta = dense((d_model, heads), ("embed", "heads"), d_model)
        self.w_a = dense((d_model, heads), ("embed", "heads"), d_model)
        self.w_o = dense((heads, v_head_dim, d_model), ("heads", "head_dim", "embed"), channels)
        # The generator starts as a static conv (W_gen2 = 0, b_gen2 drawn like GDN's conv weights):
        # W_gen2 gets a gradient at once, W_gen1 from the next step.
        self.w_gen1 = dense((d_model, hidden), ("embed", "mlp"), d_model)
        self.w_gen2 = make_param(jnp.zeros((hidden, heads, v_head_dim, conv_kernel), param_dtype),
                                 ("mlp", "heads", "head_dim", "conv"))
        bound = 1.0 / math.sqrt(conv_kernel)
        static = jax.random.uniform(rngs.params(), (heads, v_head_dim, conv_kernel), jnp.float32, -bound, bound)
        self.b_gen2 = make_param(static.astype(param_dtype), ("heads", "head_dim", "conv"))
        self.A_log, self.dt_bias = decay_params(rngs, heads, param_dtype)
        self.o_norm = RMSNorm(v_head_dim, logical_axis="head_dim", eps=norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.heads, self.v_heads, self.head_dim, self.v_head_dim = heads, heads, head_dim, v_head_dim
        self.conv_kernel = conv_kernel
        self.beta_scale = 1.0
        self.impl, self.chunk_size = impl, chunk_size
        self.dtype = dtype

    @property
    def conv_channels(self) -> int:
        """Channels of the conv tail: the value inputs, H*V."""
        return self.v_heads * self.v_head_dim

    def _kernels(self, x):
        """x [..., D] -> per-token conv kernels [..., H*V, W]."""
        hidden = jax.nn.silu(x @ self._w(self.w_gen1))
        kernels = jnp.einsum("...r,rhvw->...hvw", hidden, self._w(self.w_gen2)) + self._w(self.b_gen2)
        return kernels.reshape(*x.shape[:-1], self.conv_channels, self.conv_kernel)

    def _qkv(self, x, tail):
        """x [B, T, D], conv tail -> q, k [B, T, H, K] (L2-normalised), v [B, T, H, V], new tail."""
        q, k = (l2_normalize(jax.nn.silu(jnp.einsum("btd,dhk->bthk", x, self._w(w)))) for w in (self.w_q, self.w_k))
        v_in = jnp.einsum("btd,dhv->bthv", x, self._w(self.w_v)).reshape(*x.shape[:2], self.conv_channels)
        v, tail = dynamic_causal_conv(v_in, self._kernels(x), tail)
        return q, k, jax.nn.silu(v).reshape(*x.shape[:2], self.v_heads, self.v_head_dim), tail
