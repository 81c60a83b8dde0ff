"""What every block kind builds the same way from a `ModelConfig`: its norms and its MLP."""
from sleep_jax.layers.mlp import SwiGLU
from sleep_jax.layers.moe import SparseMoE
from sleep_jax.layers.norms import RMSNorm


def block_norm(config) -> RMSNorm:
    """An RMSNorm over the model width in the config's norm style."""
    return RMSNorm(config.d_model, logical_axis="embed", eps=config.norm_eps, dtype=config.compute_dtype,
                   param_dtype=config.parameter_dtype, style=config.norm_style)


def block_mlp(config, index: int, rngs):
    """Layer `index`'s feed-forward module: None for a layer without one (`model.no_mlp_layers`),
    a `SparseMoE` on `model.moe_layers`, else a SwiGLU."""
    if index in config.no_mlp_layers:
        return None
    if index in config.moe_layers:
        return SparseMoE(config.d_model, experts=config.moe_experts, top_k=config.moe_top_k,
                         hidden=config.moe_hidden, shared_hidden=config.moe_shared_hidden,
                         normalize_top_k=config.moe_normalize_top_k, dtype=config.compute_dtype,
                         param_dtype=config.parameter_dtype, rngs=rngs)
    return SwiGLU(config.d_model, config.mlp_hidden, dtype=config.compute_dtype,
                  param_dtype=config.parameter_dtype, rngs=rngs)
