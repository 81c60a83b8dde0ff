"""What every block kind builds the same way from a `ModelConfig`: its norms and its MLP."""
from sleep_jax.layers.mlp import SwiGLU
from sleep_jax.layers.norms import RMSNorm


def block_norm(config) -> RMSNorm:
    """An RMSNorm over the model width in the config's norm style."""
    return RMSNorm(config.d_model, logical_axis="embed", eps=config.norm_eps, dtype=config.compute_dtype,
                   param_dtype=config.parameter_dtype, style=config.norm_style)


def block_mlp(config, index: int, rngs):
    """Layer `index`'s feed-forward module, or None for a layer without one (`model.no_mlp_layers`)."""
    if index in config.no_mlp_layers:
        return None
    return SwiGLU(config.d_model, config.mlp_hidden, dtype=config.compute_dtype,
                  param_dtype=config.parameter_dtype, rngs=rngs)
