"""Gated DeltaNet mixer (Yang et al., ICLR 2025) with grouped value heads.

    q, k, v = depthwise causal conv (kernel `conv_kernel`) + SiLU of x W_q, x W_k, x W_v
    q, k    = L2-normalised per head
    beta    = beta_scale * sigmoid(x W_beta)                 write strength, per value head
                                                             (1: Qwen; 2: OLMo-Hybrid, negative eigenvalues)
    g       = -exp(A_log) * softplus(x W_a + dt_bias)        log forget gate, per value head
    o, S    = gated_delta_rule(q, k, v, g, beta, S)          S: the fast weights [B, HV, K, V] f32
    y       = (RMSNorm(o) * SiLU(x W_z)) W_o

The recurrent state of one GDN layer is {"S": [B, HV, K, V] float32, "conv": [B, kernel-1, C]}:
the fast weights and the last kernel-1 conv inputs, C = 2*H*K + HV*V channels ordered q, k, v.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax import ops
from sleep_jax.layers.common import dense, dense_param, make_param
from sleep_jax.layers.mixer import Fields, Mixer
from sleep_jax.layers.norms import RMSNorm, l2_normalize
from sleep_jax.ops.common import IMPLS


@dataclasses.dataclass(frozen=True)
class GDNFields(Fields):
    """The GDN mixer's `model.*` keys (also the sizes of the Hebbian "H" layers)."""
    gdn_heads: int = 2                    # key heads
    gdn_v_heads: int = 2                  # value heads, a multiple of gdn_heads
    gdn_head_dim: int = 32                # K
    gdn_v_head_dim: int = 32              # V
    gdn_beta_scale: float = 1.0           # beta = scale * sigmoid(.); 2 allows negative eigenvalues (OLMo)
    gdn_norm_eps: float | None = None     # eps of the GDN output norm (None = model.norm_eps)
    conv_kernel: int = 4

    def __post_init__(self):
        self._at_least_one("gdn_heads", "gdn_v_heads", "gdn_head_dim", "gdn_v_head_dim", "conv_kernel")
        if self.gdn_v_heads % self.gdn_heads:
            raise ValueError(f"model.gdn_v_heads ({self.gdn_v_heads}) must be a multiple of "
                             f"model.gdn_heads ({self.gdn_heads})")


def conv_tail(padded: jax.Array, tail_length: int, count=None) -> jax.Array:
    """The conv tail [B, W-1, C] after the first `count` inputs of a span (None: all of them), from
    padded = [previous tail (W-1 = tail_length inputs), the span's T inputs] [B, W-1+T, C]."""
    if count is None:
        return padded[:, padded.shape[1] - tail_length:]
    return jax.lax.dynamic_slice_in_dim(padded, count, tail_length, axis=1)


def causal_depthwise_conv(x: jax.Array, weight: jax.Array, tail: jax.Array, count=None):
    """Depthwise causal conv of x [B, T, C] with weight [W, C] after the previous inputs tail [B, W-1, C].

    y[t] = sum_j weight[j] * x[t - (W-1) + j]. Returns (y [B, T, C], new tail [B, W-1, C]: the last
    W-1 inputs up to input `count` (int32 scalar; None = T), taken from `tail` too when fewer).
    """
    width = weight.shape[0]
    steps = x.shape[1]
    padded = jnp.concatenate([tail.astype(x.dtype), x], axis=1)               # [B, T+W-1, C]
    y = sum(padded[:, j:j + steps] * weight[j] for j in range(width))
    return y, conv_tail(padded, width - 1, count)


def decay_params(rngs: nnx.Rngs, v_heads: int, param_dtype) -> tuple[nnx.Param, nnx.Param]:
    """(A_log, dt_bias) [HV] with Mamba2's initialisation: A ~ U(0, 16); dt log-uniform in
    [1e-3, 1e-1], dt_bias = softplus^-1(dt)."""
    a = jax.random.uniform(rngs.params(), (v_heads,), jnp.float32, 0.0, 16.0)
    A_log = make_param(jnp.log(jnp.maximum(a, 1e-4)).astype(param_dtype), ("heads",))
    log_dt = jax.random.uniform(rngs.params(), (v_heads,), jnp.float32, math.log(1e-3), math.log(1e-1))
    dt = jnp.maximum(jnp.exp(log_dt), 1e-4)
    return A_log, make_param((dt + jnp.log(-jnp.expm1(-dt))).astype(param_dtype), ("heads",))


class DeltaRuleMixer(Mixer):
    """What the fast-weight mixers (GDN, JetBlock, Hebbian) share: the parameter declarations (the
    q/k/v/z projections, the gates' projections, A_log and dt_bias, the gated output norm, W_o), the
    recurrent-state layout, the gates (beta, g), the gated output, and the span / one-token forms
    around the fast-weight rule (`rule` / `rule_step`: the gated delta rule by default).

    A subclass declares the parameters of its own input path in `_declare_inputs` (called between
    the projections and the decay parameters, so the initialisation draws keep that order), sets
    `conv_channels`, and makes q, k, v in `_qkv(x [B, T, D], conv tail, count=None) -> (q, k [B, T,
    H, K] L2-normalised, v [B, T, HV, V], the tail after the first `count` tokens (None: all))`.
    """
    has_state = True
    impls = IMPLS
    rule = staticmethod(ops.gated_delta_rule)
    rule_step = staticmethod(ops.gated_delta_rule_step)

    def __init__(self, d_model: int, *, heads: int, v_heads: int, head_dim: int, v_head_dim: int,
                 conv_kernel: int, norm_eps: float, impl: str, chunk_size: int, dtype, param_dtype,
                 rngs: nnx.Rngs, beta_scale: float = 1.0):
        dense = lambda shape, axes, fan_in: dense_param(rngs, shape, axes, fan_in=fan_in, dtype=param_dtype)
        self.w_q = dense((d_model, heads, head_dim), ("embed", "heads", "head_dim"), d_model)
        self.w_k = dense((d_model, heads, head_dim), ("embed", "heads", "head_dim"), d_model)
        self.w_v = dense((d_model, v_heads, v_head_dim), ("embed", "heads", "head_dim"), d_model)
        self.w_z = dense((d_model, v_heads, v_head_dim), ("embed", "heads", "head_dim"), d_model)
        self.w_beta = dense((d_model, v_heads), ("embed", "heads"), d_model)
        self.w_a = dense((d_model, v_heads), ("embed", "heads"), d_model)
        self.w_o = dense((v_heads, v_head_dim, d_model), ("heads", "head_dim", "embed"), v_heads * v_head_dim)
        self.heads, self.v_heads, self.head_dim, self.v_head_dim = heads, v_heads, head_dim, v_head_dim
        self.conv_kernel = conv_kernel
        self._declare_inputs(rngs, d_model, param_dtype)
        self.A_log, self.dt_bias = decay_params(rngs, v_heads, param_dtype)
        self.o_norm = RMSNorm(v_head_dim, logical_axis="head_dim", eps=norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.beta_scale = beta_scale
        self.impl, self.chunk_size = impl, chunk_size
        self.dtype = dtype

    def _declare_inputs(self, rngs: nnx.Rngs, d_model: int, param_dtype) -> None:
        raise NotImplementedError

    def init_state(self, batch: int) -> dict:
        """Zero recurrent state: {"S": [B, HV, K, V] float32, "conv": [B, kernel-1, C] compute dtype}."""
        return {"S": jnp.zeros((batch, self.v_heads, self.head_dim, self.v_head_dim), jnp.float32),
                "conv": jnp.zeros((batch, self.conv_kernel - 1, self.conv_channels), self.dtype)}

    def _w(self, p):
        return p[...].astype(self.dtype)

    def _gates(self, x):
        """x [..., D] -> (g, beta) [..., HV] float32."""
        x32 = x.astype(jnp.float32)
        beta = self.beta_scale * jax.nn.sigmoid(dense(x32, self.w_beta[...].astype(jnp.float32)))
        a = dense(x32, self.w_a[...].astype(jnp.float32)) + self.dt_bias[...].astype(jnp.float32)
        g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(a)
        return g, beta

    def _output(self, x, o):
        """o [..., HV, V] -> y [..., D]: RMSNorm(o) * SiLU(x W_z), then W_o."""
        z = dense(x, self._w(self.w_z))
        o = self.o_norm(o) * jax.nn.silu(z)
        return dense(o, self._w(self.w_o), contract=2)

    def span(self, x: jax.Array, state: dict, past=None, span=None):
        """x [B, T, D], state {"S", "conv"} -> (y [B, T, D], new state, None). `past` is not used;
        of `span` only `count`: the state is that after the span's first `count` tokens (padding
        after them gets g = beta = 0, which leaves S as it is, and the conv tail ends at `count`)."""
        x = x.astype(self.dtype)
        count = None if span is None else span.count
        q, k, v, tail = self._qkv(x, state["conv"], count)
        g, beta = self._gates(x)
        if count is not None:
            real = (jnp.arange(x.shape[1]) < count)[:, None]                    # [T, 1]
            g, beta = jnp.where(real, g, 0.0), jnp.where(real, beta, 0.0)
        o, fast_weights = self.rule(q, k, v, g, beta, initial_state=state["S"], output_final_state=True,
                                    impl=self.impl, chunk_size=self.chunk_size)
        return self._output(x, o), {"S": fast_weights, "conv": tail.astype(state["conv"].dtype)}, None

    def step(self, x: jax.Array, state: dict, cache=None, token=None):
        """One token per row: x [B, D], state {"S", "conv"} -> (y [B, D], new state, cache)."""
        x = x.astype(self.dtype)
        q, k, v, tail = self._qkv(x[:, None], state["conv"])
        g, beta = self._gates(x)
        o, fast_weights = self.rule_step(q[:, 0], k[:, 0], v[:, 0], g, beta, state["S"], scale=self.head_dim ** -0.5)
        return (self._output(x, o.astype(self.dtype)), {"S": fast_weights, "conv": tail.astype(state["conv"].dtype)},
                cache)


class GDNMixer(DeltaRuleMixer):
    """Gated DeltaNet: q, k, v through a depthwise causal conv (kernel `conv_kernel`) + SiLU."""
    fields = GDNFields

    @classmethod
    def from_config(cls, config, index: int, *, rngs: nnx.Rngs) -> "GDNMixer":
        return cls(config.d_model, heads=config.gdn_heads, v_heads=config.gdn_v_heads,
                   head_dim=config.gdn_head_dim, v_head_dim=config.gdn_v_head_dim, conv_kernel=config.conv_kernel,
                   norm_eps=config.norm_eps if config.gdn_norm_eps is None else config.gdn_norm_eps,
                   impl=config.delta_rule_impl, chunk_size=config.chunk_size, dtype=config.compute_dtype,
                   param_dtype=config.parameter_dtype, beta_scale=config.gdn_beta_scale, rngs=rngs)

    def _declare_inputs(self, rngs: nnx.Rngs, d_model: int, param_dtype) -> None:
        """The depthwise conv weights [kernel, heads, dim] of q, k and v."""
        def conv(shape):  # PyTorch Conv1d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = kernel
            bound = 1.0 / math.sqrt(self.conv_kernel)
            value = jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
            return make_param(value.astype(param_dtype), ("conv", "heads", "head_dim"))
        self.conv_q = conv((self.conv_kernel, self.heads, self.head_dim))
        self.conv_k = conv((self.conv_kernel, self.heads, self.head_dim))
        self.conv_v = conv((self.conv_kernel, self.v_heads, self.v_head_dim))

    @property
    def conv_channels(self) -> int:
        return 2 * self.heads * self.head_dim + self.v_heads * self.v_head_dim

    def _conv_weight(self) -> jax.Array:
        """[kernel, C], channels ordered q, k, v as in the conv tail."""
        w = [self._w(p).reshape(self.conv_kernel, -1) for p in (self.conv_q, self.conv_k, self.conv_v)]
        return jnp.concatenate(w, axis=1)

    def _split_qkv(self, qkv):
        """[..., C] -> q, k [..., H, K] (L2-normalised), v [..., HV, V]."""
        hk = self.heads * self.head_dim
        lead = qkv.shape[:-1]
        q = qkv[..., :hk].reshape(*lead, self.heads, self.head_dim)
        k = qkv[..., hk:2 * hk].reshape(*lead, self.heads, self.head_dim)
        v = qkv[..., 2 * hk:].reshape(*lead, self.v_heads, self.v_head_dim)
        return l2_normalize(q), l2_normalize(k), v

    def _project_qkv(self, x):
        """x [..., D] -> concatenated q, k, v projections [..., C] (before the conv).

        Whichever concatenation is smaller: for more rows than D (a span), one product with the
        weights side by side [D, C]; for fewer (a decode step), three products and the [..., C]
        activations joined (copying the weights would cost more than reading them).
        """
        weights = [self._w(w).reshape(x.shape[-1], -1) for w in (self.w_q, self.w_k, self.w_v)]
        if math.prod(x.shape[:-1]) < x.shape[-1]:
            return jnp.concatenate([dense(x, w) for w in weights], axis=-1)
        return dense(x, jnp.concatenate(weights, axis=1))

    def _qkv(self, x, tail, count=None):
        """x [B, T, D], conv tail -> q, k [B, T, H, K] (L2-normalised), v [B, T, HV, V], the tail
        after the first `count` tokens (None: all)."""
        qkv, tail = causal_depthwise_conv(self._project_qkv(x), self._conv_weight(), tail, count)
        return (*self._split_qkv(jax.nn.silu(qkv)), tail)
