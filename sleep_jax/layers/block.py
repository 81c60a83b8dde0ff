"""One `Block` for every kind, and the registry of block kinds.

A block is a mixer (`layers.mixer.Mixer`: attention, GDN, JetBlock, ...) with its norms, its two
residual branches and an optional feed-forward half, in one of three norm placements:

    pre        h = h + mixer(norm(h));               h = h + MLP(norm(h))
    post       h = h + norm(mixer(h));               h = h + norm(MLP(h))            OLMo's attention
    sandwich   h = h + out_norm(mixer(norm(h)));     h = h + out_norm(MLP(norm(h)))  Ouro

The wiring is written once (`Block._around`) and serves the span form (`__call__`) and the
one-token form (`step`) alike. `KINDS` maps each letter of `ModelConfig.pattern` to its mixer, its
norm placement and whether it has a feed-forward half; `HybridModel` builds `Block(config, i)` for
every layer and never looks at the kind.

Parameter names (checkpoints and hub key maps read them): mixer_norm, mixer, mixer_out_norm
(sandwich), mlp_norm, mlp, mlp_out_norm (sandwich). `mlp` is None on `model.no_mlp_layers`, a
`SparseMoE` on `model.moe_layers`, else a SwiGLU.
"""
import dataclasses

import jax
from flax import nnx

from sleep_jax import windows
from sleep_jax.layers.attention import AttentionMixer
from sleep_jax.layers.gdn import GDNMixer
from sleep_jax.layers.hebbian import HebbianMixer
from sleep_jax.layers.jet import JetMixer
from sleep_jax.layers.mixer import Mixer
from sleep_jax.layers.mlp import SwiGLU
from sleep_jax.layers.moe import SparseMoE
from sleep_jax.layers.norms import RMSNorm

NORM_PLACEMENTS = ("pre", "post", "sandwich")


@dataclasses.dataclass(frozen=True)
class BlockKind:
    """A row of the registry: the mixer class, where the norms sit, and whether the block has a
    feed-forward half (a layer can still drop it with `model.no_mlp_layers`)."""
    mixer: type[Mixer]
    norms: str = "pre"
    mlp: bool = True


KINDS = {
    "A": BlockKind(AttentionMixer, "pre"),          # attention
    "O": BlockKind(AttentionMixer, "post"),         # OLMo's post-norm attention
    "S": BlockKind(AttentionMixer, "sandwich"),     # Ouro's sandwich-norm attention
    "G": BlockKind(GDNMixer, "pre"),                # Gated DeltaNet
    "J": BlockKind(JetMixer, "pre"),                # Jet-Nemotron's JetBlock
    "H": BlockKind(HebbianMixer, "pre"),            # the paper's Eq. 3 gated Hebbian rule
}


def block_norm(config) -> RMSNorm:
    """An RMSNorm over the model width in the config's norm style."""
    return RMSNorm(config.d_model, logical_axis="embed", eps=config.norm_eps, dtype=config.compute_dtype,
                   param_dtype=config.parameter_dtype, style=config.norm_style)


def block_mlp(config, index: int, rngs: nnx.Rngs):
    """Layer `index`'s feed-forward module: None on `model.no_mlp_layers`, a `SparseMoE` on
    `model.moe_layers`, else a SwiGLU."""
    if index in config.no_mlp_layers:
        return None
    if index in config.moe_layers:
        return SparseMoE(config.d_model, experts=config.moe_experts, top_k=config.moe_top_k,
                         hidden=config.moe_hidden, shared_hidden=config.moe_shared_hidden,
                         normalize_top_k=config.moe_normalize_top_k, dtype=config.compute_dtype,
                         param_dtype=config.parameter_dtype, rngs=rngs)
    return SwiGLU(config.d_model, config.mlp_hidden, dtype=config.compute_dtype,
                  param_dtype=config.parameter_dtype, rngs=rngs)


class Block(nnx.Module):
    """Layer `index` of `config.pattern` (a `model.ModelConfig`): the kind's mixer in its norms and
    residuals, and the feed-forward half."""

    def __init__(self, config, index: int, *, rngs: nnx.Rngs):
        kind = KINDS[config.pattern[index]]
        sandwich = kind.norms == "sandwich"
        self.norms = kind.norms
        self.mixer_norm = block_norm(config)
        self.mixer = kind.mixer.from_config(config, index, rngs=rngs)
        self.mixer_out_norm = block_norm(config) if sandwich else None
        self.mlp = block_mlp(config, index, rngs) if kind.mlp else None
        self.mlp_norm = block_norm(config) if self.mlp is not None else None
        self.mlp_out_norm = block_norm(config) if sandwich and self.mlp is not None else None

    @property
    def has_state(self) -> bool:
        return self.mixer.has_state

    @property
    def has_kv(self) -> bool:
        return self.mixer.has_kv

    def init_state(self, batch: int):
        return self.mixer.init_state(batch)

    def init_kv(self, batch: int, length: int):
        return self.mixer.init_kv(batch, length)

    def _residual(self, hidden, branch, norm, out_norm):
        """hidden + one residual branch in this block's norm placement; `branch(x) -> (y, *rest)`.
        Returns (new hidden, rest)."""
        y, *rest = branch(hidden if self.norms == "post" else norm(hidden))
        if self.norms == "post":
            y = norm(y)
        elif out_norm is not None:
            y = out_norm(y)
        return hidden + y.astype(hidden.dtype), rest

    def _around(self, hidden, mix):
        """The block around its mixer: `mix(x) -> (y, state, memory)` is the mixer's span or step
        form. Returns (hidden, state, memory)."""
        hidden, (state, memory) = self._residual(hidden, mix, self.mixer_norm, self.mixer_out_norm)
        if self.mlp is not None:
            hidden, _ = self._residual(hidden, lambda x: (self.mlp(x),), self.mlp_norm, self.mlp_out_norm)
        return hidden, state, memory

    def __call__(self, hidden: jax.Array, state, past, span: windows.Span):
        """A span: hidden [B, T, D], this layer's recurrent state (or None) and retained
        keys/values `past` (or None) -> (hidden, state, this span's keys/values or None)."""
        return self._around(hidden, lambda x: self.mixer.span(x, state, past, span))

    def step(self, hidden: jax.Array, state, cache, token: windows.Token):
        """One token per row: hidden [B, D], state, this layer's ring buffer (or None) ->
        (hidden, state, cache)."""
        return self._around(hidden, lambda x: self.mixer.step(x, state, cache, token))
