"""The Gated DeltaNet block ("G"), pre-norm: h + GDN(norm(h)), then h + MLP(norm(h))."""
import jax
from flax import nnx

from sleep_jax.layers.blocks.parts import block_mlp, block_norm
from sleep_jax.layers.gdn import GDNMixer


class GDNBlock(nnx.Module):
    letter = "G"
    has_state, has_kv = True, False

    def __init__(self, config, index: int, *, rngs: nnx.Rngs):
        """`config` is a `sleep_jax.model.ModelConfig`; `index` the layer's position in the stack."""
        self.mixer_norm = block_norm(config)
        self.mixer = GDNMixer(
            config.d_model, heads=config.gdn_heads, v_heads=config.gdn_v_heads, head_dim=config.gdn_head_dim,
            v_head_dim=config.gdn_v_head_dim, conv_kernel=config.conv_kernel,
            norm_eps=config.norm_eps if config.gdn_norm_eps is None else config.gdn_norm_eps,
            impl=config.delta_rule_impl, chunk_size=config.chunk_size, dtype=config.compute_dtype,
            param_dtype=config.parameter_dtype, beta_scale=config.gdn_beta_scale, rngs=rngs)
        self.mlp = block_mlp(config, index, rngs)
        self.mlp_norm = block_norm(config) if self.mlp is not None else None

    def init_state(self, batch: int) -> dict:
        return self.mixer.init_state(batch)

    def init_kv(self, batch: int, length: int) -> None:
        return None

    def _add_mlp(self, hidden):
        if self.mlp is None:
            return hidden
        return hidden + self.mlp(self.mlp_norm(hidden)).astype(hidden.dtype)

    def __call__(self, hidden: jax.Array, positions, state: dict, *, past=None, past_positions=None,
                 window=None, eviction="hard"):
        """hidden [B, T, D], state {"S", "conv"} -> (hidden, new state, None)."""
        y, state = self.mixer(self.mixer_norm(hidden), state)
        return self._add_mlp(hidden + y.astype(hidden.dtype)), state, None

    def step(self, hidden: jax.Array, position, state: dict, cache, cache_positions, *, window, eviction="hard"):
        """hidden [B, D] (one token), state -> (hidden, new state, None)."""
        y, state = self.mixer.step(self.mixer_norm(hidden), state)
        return self._add_mlp(hidden + y.astype(hidden.dtype)), state, None
