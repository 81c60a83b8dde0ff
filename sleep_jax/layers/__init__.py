"""Layers: parameters (Flax NNX, with logical axis names) and pure apply methods."""
from sleep_jax.layers.attention import AttentionMixer, attention_mask, EVICTIONS
from sleep_jax.layers.blocks import BLOCKS, BLOCK_KINDS
from sleep_jax.layers.gdn import GDNMixer, causal_depthwise_conv
from sleep_jax.layers.mlp import SwiGLU
from sleep_jax.layers.norms import NORM_STYLES, RMSNorm, l2_normalize, rms_normalize
from sleep_jax.layers.rope import apply_rope

__all__ = ["AttentionMixer", "attention_mask", "EVICTIONS", "BLOCKS", "BLOCK_KINDS", "GDNMixer",
           "causal_depthwise_conv", "SwiGLU", "NORM_STYLES", "RMSNorm", "l2_normalize", "rms_normalize", "apply_rope"]
