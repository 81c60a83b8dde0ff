"""Softmax-attention blocks: pre-norm ("A") and OLMo's post-norm ("O").

    A:  h = h + attn(norm(h));   h = h + MLP(norm(h))
    O:  h = h + norm(attn(h));   h = h + norm(MLP(h))       (OLMo 2/3, OLMo-Hybrid attention layers)
"""
import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.layers.attention import AttentionMixer
from sleep_jax.layers.blocks.parts import block_mlp, block_norm


def attention_mixer(config, index: int, rngs) -> AttentionMixer:
    """Layer `index`'s attention from the config (its own sliding window and rotary width)."""
    return AttentionMixer(
        config.d_model, heads=config.attn_heads, kv_heads=config.attn_kv_heads, head_dim=config.attn_head_dim,
        output_gate=config.attn_output_gate, qk_norm=config.qk_norm, rope_theta=config.rope_theta,
        norm_eps=config.norm_eps, dtype=config.compute_dtype, param_dtype=config.parameter_dtype, rngs=rngs,
        bias=config.attn_bias, rotary_dim=config.rotary_dim(index), layer_window=config.layer_window(index),
        norm_style=config.norm_style)


class AttentionBlock(nnx.Module):
    letter = "A"
    has_state, has_kv = False, True
    post_norm = False

    def __init__(self, config, index: int, *, rngs: nnx.Rngs):
        """`config` is a `sleep_jax.model.ModelConfig`; `index` the layer's position in the stack."""
        self.mixer_norm = block_norm(config)
        self.mixer = attention_mixer(config, index, rngs)
        self.mlp = block_mlp(config, index, rngs)
        self.mlp_norm = block_norm(config) if self.mlp is not None else None
        self.kv_shape = (config.attn_kv_heads, config.attn_head_dim)
        self.dtype = config.compute_dtype

    def init_state(self, batch: int) -> None:
        return None

    def init_kv(self, batch: int, length: int) -> dict:
        """Zero keys/values {"k", "v"}: [B, length, KVH, Dh]."""
        zeros = lambda: jnp.zeros((batch, length, *self.kv_shape), self.dtype)
        return {"k": zeros(), "v": zeros()}

    def _branch_input(self, hidden, norm):
        """What a residual branch reads: norm(hidden) (pre-norm) or hidden itself (post-norm)."""
        return hidden if self.post_norm else norm(hidden)

    def _add_branch(self, hidden, y, norm):
        """hidden + y (pre-norm) or hidden + norm(y) (post-norm)."""
        return hidden + (norm(y) if self.post_norm else y).astype(hidden.dtype)

    def _add_mlp(self, hidden):
        if self.mlp is None:
            return hidden
        return self._add_branch(hidden, self.mlp(self._branch_input(hidden, self.mlp_norm)), self.mlp_norm)

    def __call__(self, hidden: jax.Array, positions: jax.Array, state, *, past: dict | None = None,
                 past_positions: jax.Array | None = None, window: int | None = None, eviction: str = "hard"):
        """hidden [B, T, D] at positions [T], attending to `past` keys/values too (see
        `AttentionMixer.__call__`) -> (hidden, state unchanged, this span's {"k", "v"})."""
        y, kv = self.mixer(self._branch_input(hidden, self.mixer_norm), positions, past=past,
                           past_positions=past_positions, window=window, eviction=eviction)
        return self._add_mlp(self._add_branch(hidden, y, self.mixer_norm)), state, kv

    def step(self, hidden: jax.Array, position, state, cache: dict, cache_positions: jax.Array, *,
             window: int | None, eviction: str = "hard"):
        """One token hidden [B, D] against this block's ring buffer -> (hidden, state, new cache)."""
        y, cache = self.mixer.step(self._branch_input(hidden, self.mixer_norm), position, cache, cache_positions,
                                   window=window, eviction=eviction)
        return self._add_mlp(self._add_branch(hidden, y, self.mixer_norm)), state, cache


class PostNormAttentionBlock(AttentionBlock):
    letter = "O"
    post_norm = True
