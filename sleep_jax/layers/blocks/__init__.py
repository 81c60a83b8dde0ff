"""Block kinds: each one module owning its norms, mixer, residuals and MLP.

A block kind is a class with a one-letter name (the letters of `ModelConfig.pattern`) and

    has_state, has_kv          does it carry recurrent state / keys and values
    init_state(batch)          its zero recurrent state (None without one)
    init_kv(batch, length)     zero keys/values {"k", "v"} (None without attention)
    __call__(hidden [B,T,D], positions [T], state, *, past, past_positions, window, eviction)
        -> (hidden, state, kv)  a span of tokens (kv: this span's keys/values, or None)
    step(hidden [B,D], position, state, cache, cache_positions, *, window, eviction)
        -> (hidden, state, cache)  one token (cache: this block's ring buffer, or None)

`HybridModel` builds `BLOCKS[letter](config, index, rngs=rngs)` for each layer and never looks at
the kind. Adding a kind: one module here and an entry in `BLOCKS`.
"""
from sleep_jax.layers.blocks.attention import AttentionBlock, PostNormAttentionBlock
from sleep_jax.layers.blocks.gdn import GDNBlock
from sleep_jax.layers.blocks.jet import JetBlock
from sleep_jax.layers.blocks.sandwich import SandwichAttentionBlock

BLOCKS = {cls.letter: cls for cls in (AttentionBlock, GDNBlock, PostNormAttentionBlock, JetBlock)}
BLOCKS["S"] = SandwichAttentionBlock   # Ouro
BLOCK_KINDS = tuple(BLOCKS)

__all__ = ["BLOCKS", "BLOCK_KINDS", "AttentionBlock", "GDNBlock", "PostNormAttentionBlock", "JetBlock",
           "SandwichAttentionBlock"]
