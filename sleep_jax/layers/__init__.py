"""Layers: parameters (Flax NNX, with logical axis names) and pure apply methods.

`block` holds the one `Block` and the registry `KINDS` (letter -> mixer, norm placement, MLP);
each mixer module (`attention`, `gdn`, `jet`, ...) holds its mixer and its config group.
"""
from sleep_jax.layers.attention import AttentionMixer
from sleep_jax.layers.block import KINDS, Block, BlockKind
from sleep_jax.layers.gdn import GDNMixer, causal_depthwise_conv
from sleep_jax.layers.halting import HaltingHead
from sleep_jax.layers.mlp import SwiGLU
from sleep_jax.layers.norms import NORM_STYLES, RMSNorm, l2_normalize, rms_normalize
from sleep_jax.layers.rope import apply_rope

__all__ = ["AttentionMixer", "KINDS", "Block", "BlockKind", "GDNMixer", "causal_depthwise_conv", "HaltingHead",
           "SwiGLU",
           "NORM_STYLES", "RMSNorm", "l2_normalize", "rms_normalize", "apply_rope"]
