"""The JetBlock ("J", Jet-Nemotron), pre-norm: h + JetMixer(norm(h)), then h + MLP(norm(h)).

Its recurrent state has the GDN block's keys and meaning ({"S", "conv"}: fast weights and the last
W-1 value inputs of the dynamic conv), so sleep, decoding and the engine treat both alike.
"""
from flax import nnx

from sleep_jax.layers.blocks.gdn import GDNBlock
from sleep_jax.layers.blocks.parts import block_mlp, block_norm
from sleep_jax.layers.jet import JetMixer


class JetBlock(GDNBlock):
    letter = "J"

    def __init__(self, config, index: int, *, rngs: nnx.Rngs):
        """`config` is a `sleep_jax.model.ModelConfig` (its `jet_*` fields); `index` the layer's position."""
        self.mixer_norm = block_norm(config)
        self.mixer = JetMixer(
            config.d_model, heads=config.jet_heads, head_dim=config.jet_head_dim, v_head_dim=config.jet_v_head_dim,
            conv_kernel=config.jet_conv_kernel, generator_reduction=config.jet_generator_reduction,
            norm_eps=config.jet_norm_eps, impl=config.delta_rule_impl, chunk_size=config.chunk_size,
            dtype=config.compute_dtype, param_dtype=config.parameter_dtype, rngs=rngs)
        self.mlp = block_mlp(config, index, rngs)
        self.mlp_norm = block_norm(config) if self.mlp is not None else None
