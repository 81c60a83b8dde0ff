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
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.layers.common import dense, dense_param, make_param
from sleep_jax.layers.gdn import DeltaRuleMixer, conv_tail
from sleep_jax.layers.mixer import Fields
from sleep_jax.layers.norms import l2_normalize


@dataclasses.dataclass(frozen=True)
class JetFields(Fields):
    """The JetBlock mixer's `model.*` keys: H key = value heads, K, V, dynamic-conv taps W, generator
    width H*V // reduction, output-norm eps."""
    jet_heads: int = 2
    jet_head_dim: int = 32
    jet_v_head_dim: int = 64
    jet_conv_kernel: int = 4
    jet_generator_reduction: int = 8
    jet_norm_eps: float = 1e-5

    def __post_init__(self):
        self._at_least_one("jet_heads", "jet_head_dim", "jet_v_head_dim", "jet_conv_kernel", "jet_generator_reduction")
        if self.jet_heads * self.jet_v_head_dim < self.jet_generator_reduction:
            raise ValueError(f"model.jet_generator_reduction={self.jet_generator_reduction} must be <= jet_heads * "
                             f"jet_v_head_dim = {self.jet_heads * self.jet_v_head_dim} (the generator width)")
        if not self.jet_norm_eps > 0:
            raise ValueError(f"model.jet_norm_eps must be > 0, got {self.jet_norm_eps}")


def dynamic_causal_conv(x: jax.Array, kernels: jax.Array, tail: jax.Array, count=None):
    """Causal conv of x [B, T, C] with per-token kernels [B, T, C, W] after the previous inputs tail [B, W-1, C].

    y[t] = sum_j kernels[t, :, j] * x[t - (W-1) + j]. Returns (y [B, T, C], new tail [B, W-1, C]:
    the last W-1 inputs up to input `count` (int32 scalar; None = T), taken from `tail` too when fewer).
    """
    width = kernels.shape[-1]
    steps = x.shape[1]
    padded = jnp.concatenate([tail.astype(x.dtype), x], axis=1)               # [B, T+W-1, C]
    y = sum(padded[:, j:j + steps] * kernels[..., j] for j in range(width))
    return y, conv_tail(padded, width - 1, count)


class JetMixer(DeltaRuleMixer):
    """JetBlock mixer; shares GDN's parameter declarations, state layout, gates, gated output norm
    and the span / one-token forms (`DeltaRuleMixer`); its own part is the dynamic conv (`_qkv`).

    `heads` key and value heads (as published: HV = H), `head_dim` K, `v_head_dim` V,
    `conv_kernel` W taps, generator hidden width R = H*V // generator_reduction.
    """
    fields = JetFields

    def __init__(self, d_model: int, *, heads: int, head_dim: int, v_head_dim: int, conv_kernel: int,
                 generator_reduction: int, norm_eps: float, impl: str, chunk_size: int, dtype, param_dtype,
                 rngs: nnx.Rngs):
        self.generator_reduction = generator_reduction
        super().__init__(d_model, heads=heads, v_heads=heads, head_dim=head_dim, v_head_dim=v_head_dim,
                         conv_kernel=conv_kernel, norm_eps=norm_eps, impl=impl, chunk_size=chunk_size, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)

    @classmethod
    def from_config(cls, config, index: int, *, rngs: nnx.Rngs) -> "JetMixer":
        return cls(config.d_model, heads=config.jet_heads, head_dim=config.jet_head_dim,
                   v_head_dim=config.jet_v_head_dim, conv_kernel=config.jet_conv_kernel,
                   generator_reduction=config.jet_generator_reduction, norm_eps=config.jet_norm_eps,
                   impl=config.delta_rule_impl, chunk_size=config.chunk_size, dtype=config.compute_dtype,
                   param_dtype=config.parameter_dtype, rngs=rngs)

    def _declare_inputs(self, rngs: nnx.Rngs, d_model: int, param_dtype) -> None:
        """The kernel generator. It starts as a static conv (W_gen2 = 0, b_gen2 drawn like GDN's conv
        weights): W_gen2 gets a gradient at once, W_gen1 from the next step."""
        hidden = self.conv_channels // self.generator_reduction      # >= 1: checked by JetFields
        self.w_gen1 = dense_param(rngs, (d_model, hidden), ("embed", "mlp"), fan_in=d_model, dtype=param_dtype)
        self.w_gen2 = make_param(jnp.zeros((hidden, self.heads, self.v_head_dim, self.conv_kernel), param_dtype),
                                 ("mlp", "heads", "head_dim", "conv"))
        bound = 1.0 / math.sqrt(self.conv_kernel)
        static = jax.random.uniform(rngs.params(), (self.heads, self.v_head_dim, self.conv_kernel), jnp.float32,
                                    -bound, bound)
        self.b_gen2 = make_param(static.astype(param_dtype), ("heads", "head_dim", "conv"))

    @property
    def conv_channels(self) -> int:
        """Channels of the conv tail: the value inputs, H*V."""
        return self.v_heads * self.v_head_dim

    def _kernels(self, x):
        """x [..., D] -> per-token conv kernels [..., H*V, W]."""
        hidden = jax.nn.silu(dense(x, self._w(self.w_gen1)))
        kernels = dense(hidden, self._w(self.w_gen2)) + self._w(self.b_gen2)
        return kernels.reshape(*x.shape[:-1], self.conv_channels, self.conv_kernel)

    def _qkv(self, x, tail, count=None):
        """x [B, T, D], conv tail -> q, k [B, T, H, K] (L2-normalised), v [B, T, H, V], the tail
        after the first `count` tokens (None: all)."""
        q, k = (l2_normalize(jax.nn.silu(dense(x, self._w(w)))) for w in (self.w_q, self.w_k))
        v_in = dense(x, self._w(self.w_v)).reshape(*x.shape[:2], self.conv_channels)
        v, tail = dynamic_causal_conv(v_in, self._kernels(x), tail, count)
        return q, k, jax.nn.silu(v).reshape(*x.shape[:2], self.v_heads, self.v_head_dim), tail
