"""Ouro's attention block ("S"): sandwich norms on both sides of attention and of the MLP.

    h = h + norm_2(attn(norm(h)));   h = h + mlp_norm_2(MLP(mlp_norm(h)))

Hub names (Ouro): input_layernorm, input_layernorm_2, post_attention_layernorm,
post_attention_layernorm_2 = mixer_norm, mixer_out_norm, mlp_norm, mlp_out_norm.
"""
import jax
from flax import nnx

from sleep_jax.layers.blocks.attention import AttentionBlock
from sleep_jax.layers.blocks.parts import block_norm


class SandwichAttentionBlock(AttentionBlock):
    letter = "S"

    def __init__(self, config, index: int, *, rngs: nnx.Rngs):
        """`config` is a `sleep_jax.model.ModelConfig`; `index` the layer's position in the stack."""
        super().__init__(config, index, rngs=rngs)
        self.mixer_out_norm = block_norm(config)
        self.mlp_out_norm = block_norm(config) if self.mlp is not None else None

    def _add_mlp(self, hidden):
        if self.mlp is None:
            return hidden
        return hidden + self.mlp_out_norm(self.mlp(self.mlp_norm(hidden))).astype(hidden.dtype)

    def __call__(self, hidden: jax.Array, positions: jax.Array, state, *, past: dict | None = None,
                 past_positions: jax.Array | None = None, window: int | None = None, eviction: str = "hard"):
        """hidden [B, T, D] at positions [T] (see `AttentionBlock.__call__`) -> (hidden, state, {"k", "v"})."""
        y, kv = self.mixer(self.mixer_norm(hidden), positions, past=past, past_positions=past_positions,
                           window=window, eviction=eviction)
        return self._add_mlp(hidden + self.mixer_out_norm(y).astype(hidden.dtype)), state, kv

    def step(self, hidden: jax.Array, position, state, cache: dict, cache_positions: jax.Array, *,
             window: int | None, eviction: str = "hard"):
        """One token hidden [B, D] against this block's ring buffer -> (hidden, state, new cache)."""
        y, cache = self.mixer.step(self.mixer_norm(hidden), position, cache, cache_positions, window=window,
                                   eviction=eviction)
        return self._add_mlp(hidden + self.mixer_out_norm(y).astype(hidden.dtype)), state, cache
