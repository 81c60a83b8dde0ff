"""Grouped-query softmax attention with RoPE on absolute positions, and its eviction masks.

Which keys a query may see is a pure function of absolute positions (`attention_mask`), so the
same code serves a window (with or without the previous window's keys), a whole sequence and a
one-token decode step against a ring-buffer KV cache.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.layers.common import dense_param, make_param
from sleep_jax.layers.norms import RMSNorm
from sleep_jax.layers.rope import apply_rope

EVICTIONS = ("hard", "sliding")


def attention_mask(q_positions: jax.Array, k_positions: jax.Array, *, window: int | None,
                   eviction: str = "hard", layer_window: int = 0) -> jax.Array:
    """bool [Tq, Tk]: may the query at q_positions[i] attend to the key at k_positions[j].

    Always causal; keys with a negative position are empty slots. `window=None`: full causal.
    `hard`: only keys of the same window (positions // window equal). `sliding`: only the most
    recent `window` tokens (q - k < window). `layer_window` > 0 is a layer's own sliding window
    (q - k < layer_window), applied on top of the sleep window rule.
    """
    q = q_positions[:, None]
    k = k_positions[None, :]
    allowed = (k >= 0) & (k <= q)
    if layer_window:
        allowed = allowed & (q - k < layer_window)
    if window is None:
        return allowed
    if eviction == "hard":
        return allowed & (k // window == q // window)
    if eviction == "sliding":
        return allowed & (q - k < window)
    raise ValueError(f"eviction={eviction!r} must be one of {EVICTIONS}")


QK_NORMS = (None, "head", "full")


class AttentionMixer(nnx.Module):
    """GQA: `heads` query heads share `kv_heads` key/value heads (heads % kv_heads == 0).

    Options (all from the model config): q/k/v bias; a per-channel output gate
    `o * sigmoid(x W_g)`; RMSNorm of q and k before RoPE, per head (`qk_norm="head"`, [Dh]) or
    over the full projection width (`"full"`, [H*Dh] / [KVH*Dh]); RoPE on the first `rotary_dim`
    channels of each head (0 = NoPE); a layer-own sliding window `layer_window` (0 = none).
    """

    def __init__(self, d_model: int, *, heads: int, kv_heads: int, head_dim: int, output_gate: bool,
                 qk_norm: str | None, rope_theta: float, norm_eps: float, dtype, param_dtype, rngs: nnx.Rngs,
                 bias: bool = False, rotary_dim: int | None = None, layer_window: int = 0,
                 norm_style: str = "plain"):
        if heads % kv_heads:
            raise ValueError(f"model.attn_heads ({heads}) must be a multiple of model.attn_kv_heads ({kv_heads})")
        if qk_norm not in QK_NORMS:
            raise ValueError(f"model.qk_norm={qk_norm!r} must be one of {QK_NORMS}")
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
        self.head_dim = head_dim
        self.dtype = dtype

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
        q, k, v = (jnp.einsum("btd,dhk->bthk", x, self._w(w)) for w in (self.w_q, self.w_k, self.w_v))
        if self.b_q is not None:
            q, k, v = q + self._w(self.b_q), k + self._w(self.b_k), v + self._w(self.b_v)
        if self.q_norm is not None:
            q, k = self._norm(self.q_norm, q), self._norm(self.k_norm, k)
        if self.rotary_dim:
            q = apply_rope(q, positions, self.rope_theta, self.rotary_dim)
            k = apply_rope(k, positions, self.rope_theta, self.rotary_dim)
        return q, k, v

    def mask(self, q_positions, k_positions, *, window, eviction):
        """`attention_mask` with this layer's own sliding window."""
        return attention_mask(q_positions, k_positions, window=window, eviction=eviction,
                              layer_window=self.layer_window)

    def attend(self, x: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
        """Softmax attention of q [B,T,H,Dh] over k, v [B,S,KVH,Dh] where mask [T, S] (or per row
        [B, T, S]) allows; -> [B, T, D]."""
        mask = mask[None, None] if mask.ndim == 2 else mask[:, None]
        o = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=self.head_dim ** -0.5)
        if self.w_gate is not None:
            gate = jnp.einsum("btd,dhk->bthk", x.astype(self.dtype), self._w(self.w_gate))
            o = o * jax.nn.sigmoid(gate)
        return jnp.einsum("bthk,hkd->btd", o, self._w(self.w_o))

    def __call__(self, x: jax.Array, positions: jax.Array, *, past: dict | None = None,
                 past_positions: jax.Array | None = None, window: int | None, eviction: str = "hard"):
        """Attention over the block's own tokens, plus retained keys/values of earlier tokens.

        Args:
          x: [B, T, D]; positions: [T] absolute positions of x.
          past: None or {"k", "v"}: [B, S, KVH, Dh], keys/values kept from earlier tokens, whose
            positions are past_positions [S] (negative = empty slot).
          window, eviction: see `attention_mask`.
        Returns:
          (y [B, T, D], {"k", "v"}: this call's own keys/values [B, T, KVH, Dh]).
        """
        q, k, v = self.project(x, positions)
        if past is None:
            keys, values, key_positions = k, v, positions
        else:
            keys = jnp.concatenate([past["k"].astype(k.dtype), k], axis=1)
            values = jnp.concatenate([past["v"].astype(v.dtype), v], axis=1)
            key_positions = jnp.concatenate([past_positions, positions])
        mask = self.mask(positions, key_positions, window=window, eviction=eviction)
        return self.attend(x, q, keys, values, mask), {"k": k, "v": v}

    def step(self, x: jax.Array, position: jax.Array, cache: dict, cache_positions: jax.Array, *,
             window: int | None, eviction: str = "hard"):
        """One token against a ring-buffer cache.

        Args:
          x: [B, D]; position: int32 [B], each row's token's absolute position.
          cache: {"k", "v"}: [B, C, KVH, Dh]; cache_positions: [B, C] int32, the position held by
            each slot (-1 = empty), already updated for this token (slot position % C holds it).
        Returns:
          (y [B, D], the updated cache).
        """
        capacity = cache["k"].shape[1]
        # RoPE per row: project each row's token at its own position.
        q, k, v = jax.vmap(lambda x, p: self.project(x[None, None], p[None]))(x, position)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]                                            # [B, 1, heads, Dh]
        written = (jnp.arange(capacity) == (position % capacity)[:, None])[:, :, None, None]
        cache = {"k": jnp.where(written, k.astype(cache["k"].dtype), cache["k"]),
                 "v": jnp.where(written, v.astype(cache["v"].dtype), cache["v"])}
        mask = jax.vmap(lambda q, k: self.mask(q[None], k, window=window, eviction=eviction))(
            position, cache_positions)                                                # [B, 1, C]
        y = self.attend(x[:, None], q, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype), mask)
        return y[:, 0], cache
