"""Pre-norm residual block: x + mixer(norm(x)), then x + SwiGLU(norm(x)). The mixer is attention
("A") or Gated DeltaNet ("G")."""
import jax
from flax import nnx

from sleep_jax.layers.attention import AttentionMixer
from sleep_jax.layers.gdn import GDNMixer
from sleep_jax.layers.mlp import SwiGLU
from sleep_jax.layers.norms import RMSNorm

BLOCK_KINDS = ("A", "G")


class Block(nnx.Module):
    def __init__(self, kind: str, config, *, rngs: nnx.Rngs):
        """`config` is a `sleep_jax.model.ModelConfig`."""
        if kind not in BLOCK_KINDS:
            raise ValueError(f"model.pattern: block kind {kind!r} must be one of {BLOCK_KINDS}")
        dtype, param_dtype = config.compute_dtype, config.parameter_dtype
        norm = lambda: RMSNorm(config.d_model, logical_axis="embed", eps=config.norm_eps, dtype=dtype,
                               param_dtype=param_dtype)
        self.kind = kind
        self.mixer_norm = norm()
        if kind == "A":
            self.mixer = AttentionMixer(
                config.d_model, heads=config.attn_heads, kv_heads=config.attn_kv_heads,
                head_dim=config.attn_head_dim, output_gate=config.attn_output_gate, qk_norm=config.qk_norm,
                rope_theta=config.rope_theta, norm_eps=config.norm_eps, dtype=dtype, param_dtype=param_dtype,
                rngs=rngs)
        else:
            self.mixer = GDNMixer(
                config.d_model, heads=config.gdn_heads, v_heads=config.gdn_v_heads, head_dim=config.gdn_head_dim,
                v_head_dim=config.gdn_v_head_dim, conv_kernel=config.conv_kernel, norm_eps=config.norm_eps,
                impl=config.delta_rule_impl, chunk_size=config.chunk_size, dtype=dtype, param_dtype=param_dtype,
                rngs=rngs)
        self.mlp_norm = norm()
        self.mlp = SwiGLU(config.d_model, config.mlp_hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def add_mlp(self, x: jax.Array) -> jax.Array:
        """The second half of the block: x + SwiGLU(norm(x))."""
        return x + self.mlp(self.mlp_norm(x)).astype(x.dtype)
