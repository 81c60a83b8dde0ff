"""Grouped-query softmax attention with RoPE on absolute positions: the mixer of kinds A, O and S.

Which keys a query may see is a pure function of absolute positions (`windows.attention_mask`), so
the same code serves a window (with or without the previous window's keys), a whole sequence and a
one-token decode step against a ring-buffer KV cache.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax import windows
from sleep_jax.layers.common import dense, dense_param, make_param
from sleep_jax.layers.mixer import Fields, Mixer
from sleep_jax.layers.norms import RMSNorm
from sleep_jax.layers.rope import apply_rope

QK_NORMS = (None, "head", "full")


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float) -> jax.Array:
    """Softmax attention of q [B, T, H, Dh] over k, v [B, S, KVH, Dh] where mask [T, S] (or per row
    [B, T, S]) allows -> [B, T, H, Dh]; query head h reads key/value head h // (H // KVH).

    The numbers of `jax.nn.dot_product_attention` (its XLA form: float32 scores and softmax,
    masked scores set to -0.7 * float32 max, probabilities cast to v's dtype), in a layout that
    needs no copy of the [T, S] scores: the G = H // KVH query heads of a key/value head are one
    [G * T, Dh] block, so the score and value products and their gradients are one batched matmul
    per (row, key/value head), and only the [.., T, Dh] operands are transposed.
    """
    batch, steps, heads, dim = q.shape
    keys, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    blocks = q.reshape(batch, steps, kv_heads, group, dim).transpose(0, 2, 3, 1, 4)
    blocks = blocks.reshape(batch, kv_heads, group * steps, dim)                       # [B, KVH, G*T, Dh]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)                            # [B, KVH, S, Dh]
    scores = jnp.einsum("bkqd,bksd->bkqs", blocks, k, preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(batch, kv_heads, group, steps, keys)
    mask = mask[None, None, None] if mask.ndim == 2 else mask[:, None, None]
    scores = jnp.where(mask, scores, -0.7 * jnp.finfo(jnp.float32).max)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(batch, kv_heads, group * steps, keys)
    o = jnp.einsum("bkqs,bksd->bkqd", probs, v).reshape(batch, kv_heads, group, steps, dim)
    return o.transpose(0, 3, 1, 2, 4).reshape(batch, steps, heads, dim)


@dataclasses.dataclass(frozen=True)
class AttentionFields(Fields):
    """The attention mixer's `model.*` keys."""
    attn_heads: int = 4
    attn_kv_heads: int = 2
    attn_head_dim: int = 32
    attn_output_gate: bool = False
    attn_bias: bool = False               # biases on the q, k, v projections
    qk_norm: str | None = None            # None, "head" (RMSNorm per head, [Dh]) or "full" ([H*Dh]); True = "head"
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0          # RoPE on the first rotary_fraction * attn_head_dim channels
    nope_layers: tuple[int, ...] = ()     # attention layers without RoPE
    layer_windows: tuple[int, ...] = ()   # per layer: its own sliding window (0 = full); () = none
    layer_index_fields = ("nope_layers",)
    layer_value_fields = ("layer_windows",)

    def __post_init__(self):
        self._set("qk_norm", {True: "head", False: None}.get(self.qk_norm, self.qk_norm))
        self._at_least_one("attn_heads", "attn_kv_heads", "attn_head_dim")
        if self.attn_heads % self.attn_kv_heads:
            raise ValueError(f"model.attn_heads ({self.attn_heads}) must be a multiple of "
                             f"model.attn_kv_heads ({self.attn_kv_heads})")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"model.qk_norm={self.qk_norm!r} must be one of {QK_NORMS} (True = 'head')")
        rotary = self.attn_head_dim * self.rotary_fraction
        if rotary != int(rotary) or int(rotary) % 2 or not 0 < rotary <= self.attn_head_dim:
            raise ValueError(f"model.rotary_fraction={self.rotary_fraction} must give an even number of rotary "
                             f"channels in (0, attn_head_dim={self.attn_head_dim}], got {rotary}")
        if any(w < 0 for w in self.layer_windows):
            raise ValueError(f"model.layer_windows={self.layer_windows} must be windows >= 0 (0 = none)")


class AttentionMixer(Mixer):
    """GQA: `heads` query heads share `kv_heads` key/value heads (heads % kv_heads == 0, checked
    by `AttentionFields`).

    Options (all from the model config): q/k/v bias; a per-channel output gate
    `o * sigmoid(x W_g)`; RMSNorm of q and k before RoPE, per head (`qk_norm="head"`, [Dh]) or
    over the full projection width (`"full"`, [H*Dh] / [KVH*Dh]); RoPE on the first `rotary_dim`
    channels of each head (0 = NoPE); a layer-own sliding window `layer_window` (0 = none).
    """
    fields = AttentionFields
    has_kv = True

    def __init__(self, d_model: int, *, heads: int, kv_heads: int, head_dim: int, output_gate: bool,
                 qk_norm: str | None, rope_theta: float, norm_eps: float, dtype, param_dtype, rngs: nnx.Rngs,
                 bias: bool = False, rotary_dim: int | None = None, layer_window: int = 0,
                 norm_style: str = "plain"):
        dense = lambda shape, axes, fan_in: dense_param(rngs, shape, axes, fan_in=fan_in, dtype=param_dtype)
        self.w_q = dense((d_model, heads, head_dim), ("embed", "heads", "head_dim"), d_model)
        self.w_k = dense((d_model, kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), d_model)
        self.w_v = dense((d_model, kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), d_model)
        self.w_o = dense((heads, head_dim, d_model), ("heads", "head_dim", "embed"), heads * head_dim)
        self.w_gate = dense((d_model, heads, head_dim), ("embed", "heads", "head_dim"), d_model) if output_gate else None
        zeros = lambda n, axis: make_param(jnp.zeros((n, head_dim), param_dtype), (axis, "head_dim"))
        self.b_q = zeros(heads, "heads") if bias else None
        self.b_k = zeros(kv_heads, "kv_heads") if bias else None
        self.b_v = zeros(kv_heads, "kv_heads") if bias else None
        norm = lambda dim, axis: RMSNorm(dim, logical_axis=axis, eps=norm_eps, dtype=dtype, param_dtype=param_dtype,
                                         style=norm_style)
        if qk_norm == "head":
            self.q_norm, self.k_norm = norm(head_dim, "head_dim"), norm(head_dim, "head_dim")
        elif qk_norm == "full":
            self.q_norm, self.k_norm = norm(heads * head_dim, "heads"), norm(kv_heads * head_dim, "kv_heads")
        else:
            self.q_norm = self.k_norm = None
        self.qk_norm = qk_norm
        self.rope_theta = rope_theta
        self.rotary_dim = head_dim if rotary_dim is None else rotary_dim
        self.layer_window = layer_window
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.dtype = dtype

    @classmethod
    def from_config(cls, config, index: int, *, rngs: nnx.Rngs) -> "AttentionMixer":
        """Layer `index`'s attention: its own rotary width (0 on `nope_layers`) and sliding window."""
        rotary = 0 if index in config.nope_layers else int(config.attn_head_dim * config.rotary_fraction)
        return cls(config.d_model, heads=config.attn_heads, kv_heads=config.attn_kv_heads,
                   head_dim=config.attn_head_dim, output_gate=config.attn_output_gate, qk_norm=config.qk_norm,
                   rope_theta=config.rope_theta, norm_eps=config.norm_eps, dtype=config.compute_dtype,
                   param_dtype=config.parameter_dtype, rngs=rngs, bias=config.attn_bias, rotary_dim=rotary,
                   layer_window=config.layer_windows[index] if config.layer_windows else 0,
                   norm_style=config.norm_style)

    def init_kv(self, batch: int, length: int) -> dict:
        """Zero keys/values {"k", "v"}: [B, length, KVH, Dh] in the compute dtype."""
        zeros = lambda: jnp.zeros((batch, length, self.kv_heads, self.head_dim), self.dtype)
        return {"k": zeros(), "v": zeros()}

    def _w(self, p):
        return p[...].astype(self.dtype)

    def _norm(self, norm, x):
        """q or k [B, T, heads, Dh] through its RMSNorm (per head, or over the flattened heads)."""
        if self.qk_norm == "full":
            return norm(x.reshape(*x.shape[:-2], -1)).reshape(x.shape)
        return norm(x)

    def project(self, x: jax.Array, positions: jax.Array):
        """x [B, T, D], positions [T] -> q [B,T,H,Dh], k [B,T,KVH,Dh] (both RoPE'd), v [B,T,KVH,Dh]."""
        x = x.astype(self.dtype)
        q, k, v = (dense(x, self._w(w)) for w in (self.w_q, self.w_k, self.w_v))
        if self.b_q is not None:
            q, k, v = q + self._w(self.b_q), k + self._w(self.b_k), v + self._w(self.b_v)
        if self.q_norm is not None:
            q, k = self._norm(self.q_norm, q), self._norm(self.k_norm, k)
        if self.rotary_dim:
            q = apply_rope(q, positions, self.rope_theta, self.rotary_dim)
            k = apply_rope(k, positions, self.rope_theta, self.rotary_dim)
        return q, k, v

    def _mask(self, q_positions, k_positions, view):
        """`windows.attention_mask` under `view`'s rule, with this layer's own sliding window."""
        return windows.attention_mask(q_positions, k_positions, window=view.window, eviction=view.eviction,
                                      layer_window=self.layer_window)

    def attend(self, x: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
        """Softmax attention of q [B,T,H,Dh] over k, v [B,S,KVH,Dh] where mask [T, S] (or per row
        [B, T, S]) allows; -> [B, T, D]."""
        o = grouped_attention(q, k, v, mask, scale=self.head_dim ** -0.5)
        if self.w_gate is not None:
            gate = dense(x.astype(self.dtype), self._w(self.w_gate))
            o = o * jax.nn.sigmoid(gate)
        return dense(o, self._w(self.w_o), contract=2)

    def span(self, x: jax.Array, state, past: dict | None, span: windows.Span):
        """Attention over the span's own tokens, plus retained keys/values of earlier tokens.

        Args:
          x: [B, T, D] at span.positions [T].
          state: passed through (attention keeps no recurrent state).
          past: None or {"k", "v"}: [B, S, KVH, Dh], keys/values kept from earlier tokens, at
            span.past_positions [S] (negative = empty slot).
        Returns:
          (y [B, T, D], state, {"k", "v"}: this span's own keys/values [B, T, KVH, Dh]).
        """
        q, k, v = self.project(x, span.positions)
        if past is None:
            keys, values, key_positions = k, v, span.positions
        else:
            keys = jnp.concatenate([past["k"].astype(k.dtype), k], axis=1)
            values = jnp.concatenate([past["v"].astype(v.dtype), v], axis=1)
            key_positions = jnp.concatenate([span.past_positions, span.positions])
        mask = self._mask(span.positions, key_positions, span)
        return self.attend(x, q, keys, values, mask), state, {"k": k, "v": v}

    def step(self, x: jax.Array, state, cache: dict, token: windows.Token):
        """One token per row against its ring-buffer cache {"k", "v"}: [B, C, KVH, Dh]; the token's
        key/value goes to the slot `token.written` -> (y [B, D], state, the updated cache)."""
        # RoPE per row: project each row's token at its own position.
        q, k, v = jax.vmap(lambda x, p: self.project(x[None, None], p[None]))(x, token.position)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]                                            # [B, 1, heads, Dh]
        written = token.written[:, :, None, None]
        cache = {"k": jnp.where(written, k.astype(cache["k"].dtype), cache["k"]),
                 "v": jnp.where(written, v.astype(cache["v"].dtype), cache["v"])}
        mask = jax.vmap(lambda q, k: self._mask(q[None], k, token))(token.position, token.cache_positions)  # [B, 1, C]
        y = self.attend(x[:, None], q, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype), mask)
        return y[:, 0], state, cache
