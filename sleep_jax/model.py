"""The hybrid attention / Gated DeltaNet stack, and its recurrent-state and KV-cache pytrees.

`HybridModel` holds parameters only. Everything that changes while reading a sequence lives in
explicit pytrees passed in and out:

- recurrent state: {"layer{i}": {"S": [B, HV, K, V] float32, "conv": [B, kernel-1, C]}} for every
  GDN block i (the fast weights and the conv tail);
- keys/values: {"layer{i}": {"k", "v": [B, S, KVH, Dh]}} for attention blocks i, with their
  absolute positions held beside them ([S] int32, negative = empty slot).

Layer groups: with `loop=(start, end)` the blocks [0, start) are the prelude (run once per window),
[start, end) the looped segment (run N times when sleeping) and [end, n) the coda (run once).
`loop=None` loops the whole stack.

Looped LMs (Ouro, `ut_steps = U`): the stack of n blocks runs U times per pass (universal
transformer steps), the final norm closing every step and feeding the next. This is one place:
`self.blocks` is the unrolled stack of U * n entries holding the n blocks U times over (shared
references, so each parameter exists once), and `close_step` applies the norm after every n-th.
Everything indexed by block (state and key/value pytrees "layer{u * n + i}", sleep's layer groups,
decoding) then sees U * n layers: each step has its own KV cache slot (Ouro's
`current_ut * num_layers + layer_idx`) and, for inserted GDN blocks, its own fast weights; RoPE
positions are the tokens', shared by all steps. The readout (`logits`) takes the last step, the
exit-gate expected logits, or a threshold exit (`ut_exit`).

Sleep on a looped LM: one sleep pass is one whole forward of the model (all U steps), so N = 1 is
exactly the pretrained model, as for every other model (DESIGN: N = 1 is the vanilla model), and
pass n + 1 reads the normed output of pass n, i.e. continues the UT recursion: N passes over a
window are N * U universal-transformer steps, with the fast weights carried from pass to pass.
The paper loops all of Ouro's blocks: a UT model has no prelude or coda (`loop` must be None).
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.layers import BLOCKS, BLOCK_KINDS, EVICTIONS, NORM_STYLES, RMSNorm
from sleep_jax.layers.attention import QK_NORMS
from sleep_jax.layers.common import dense_param, dtype_from_name, make_param
from sleep_jax.ops.delta_rule import CHUNK_SIZES, IMPLS

# Per-layer options of ModelConfig: tuples of layer indices, and tuples of one value per layer
# (empty = none). A field added here is validated, and shifted by `hf.insert.insert_blocks`.
LAYER_INDEX_FIELDS = ("nope_layers", "no_mlp_layers", "moe_layers")
LAYER_VALUE_FIELDS = ("layer_windows",)
UT_EXITS = ("last", "expected", "threshold")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The `model` block of a config, field for field.

    `pattern` gives one block kind per layer (`sleep_jax.layers.BLOCKS`): a string such as
    "GGGA" or the same as a list of letters. Per-layer options are tuples of layer indices
    (`nope_layers`, `no_mlp_layers`) or one value per layer (`layer_windows`, empty = none).
    """
    vocab_size: int
    d_model: int = 128
    pattern: str = "AGAG"                 # A = attention, O = post-norm attention (OLMo), G = GDN
    loop: tuple[int, int] | None = None   # looped segment [start, end) of the pattern; None = whole stack
    attn_heads: int = 4
    attn_kv_heads: int = 2
    attn_head_dim: int = 32
    attn_output_gate: bool = False
    attn_bias: bool = False               # biases on the q, k, v projections
    qk_norm: str | None = None            # None, "head" (RMSNorm per head, [Dh]) or "full" ([H*Dh]); True = "head"
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0          # RoPE on the first rotary_fraction * attn_head_dim channels
    nope_layers: tuple[int, ...] = ()     # attention layers without RoPE
    layer_windows: tuple[int, ...] = ()   # per layer: its own sliding window (0 = full); () = none
    no_mlp_layers: tuple[int, ...] = ()   # layers without a feed-forward half
    moe_layers: tuple[int, ...] = ()      # layers whose feed-forward half is a SparseMoE (layers.moe)
    moe_experts: int = 0
    moe_top_k: int = 1
    moe_hidden: int = 0                   # per routed expert
    moe_shared_hidden: int = 0            # the gated shared expert
    moe_normalize_top_k: bool = True
    norm_style: str = "plain"             # "plain" w * x_hat, or "zero_centred" (1 + w) * x_hat
    gdn_heads: int = 2                    # key heads
    gdn_v_heads: int = 2                  # value heads, a multiple of gdn_heads
    gdn_head_dim: int = 32                # K
    gdn_v_head_dim: int = 32              # V
    gdn_beta_scale: float = 1.0           # beta = scale * sigmoid(.); 2 allows negative eigenvalues (OLMo)
    gdn_norm_eps: float | None = None     # eps of the GDN output norm (None = norm_eps)
    conv_kernel: int = 4
    # JetBlock ("J", sleep_jax.layers.jet): H key = value heads, K, V, dynamic-conv taps W,
    # generator width H*V // reduction, output-norm eps
    jet_heads: int = 2
    jet_head_dim: int = 32
    jet_v_head_dim: int = 64
    jet_conv_kernel: int = 4
    jet_generator_reduction: int = 8
    jet_norm_eps: float = 1e-5
    mlp_hidden: int = 512
    tie_embeddings: bool = True
    dtype: str = "float32"                # compute dtype
    param_dtype: str = "float32"
    delta_rule_impl: str = "auto"
    chunk_size: int = 64
    norm_eps: float = 1e-6
    hf_model_type: str | None = None      # the hub architecture this follows (sleep_jax.hf), None = native
    # looped LM (Ouro): the stack runs ut_steps times per pass, the final norm after every step
    ut_steps: int | None = None           # None = not a looped LM (final norm only before the head)
    exit_gate: bool = False               # Ouro's early-exit gate: Linear(D, 1) + bias on each step's normed hidden
    ut_exit: str = "last"                 # readout: "last" step, "expected" (exit-pdf weighted logits, Ouro's
                                          # training loss) or "threshold" (first step whose cumulative exit
    ut_exit_threshold: float = 1.0        # probability reaches ut_exit_threshold; the last if none does)

    def __post_init__(self):
        if self.loop is not None:
            object.__setattr__(self, "loop", tuple(int(i) for i in self.loop))
        if not isinstance(self.pattern, str):
            object.__setattr__(self, "pattern", "".join(self.pattern))
        qk_norm = {True: "head", False: None}.get(self.qk_norm, self.qk_norm)
        object.__setattr__(self, "qk_norm", qk_norm)
        for name in LAYER_INDEX_FIELDS + LAYER_VALUE_FIELDS:
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
        for name in ("vocab_size", "d_model", "attn_heads", "attn_kv_heads", "attn_head_dim", "gdn_heads",
                     "gdn_v_heads", "gdn_head_dim", "gdn_v_head_dim", "conv_kernel", "mlp_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("jet_heads", "jet_head_dim", "jet_v_head_dim", "jet_conv_kernel", "jet_generator_reduction"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.jet_heads * self.jet_v_head_dim < self.jet_generator_reduction:
            raise ValueError(f"model.jet_generator_reduction={self.jet_generator_reduction} must be <= jet_heads * "
                             f"jet_v_head_dim = {self.jet_heads * self.jet_v_head_dim} (the generator width)")
        if not self.jet_norm_eps > 0:
            raise ValueError(f"model.jet_norm_eps must be > 0, got {self.jet_norm_eps}")
        if not self.pattern or any(c not in BLOCK_KINDS for c in self.pattern):
            raise ValueError(f"model.pattern={self.pattern!r} must be a non-empty string of {BLOCK_KINDS}")
        if self.loop is not None:
            if len(self.loop) != 2 or not 0 <= self.loop[0] < self.loop[1] <= len(self.pattern):
                raise ValueError(f"model.loop={self.loop} must be (start, end) with 0 <= start < end <= "
                                 f"len(model.pattern)={len(self.pattern)}")
        if self.attn_heads % self.attn_kv_heads:
            raise ValueError(f"model.attn_heads ({self.attn_heads}) must be a multiple of "
                             f"model.attn_kv_heads ({self.attn_kv_heads})")
        if self.gdn_v_heads % self.gdn_heads:
            raise ValueError(f"model.gdn_v_heads ({self.gdn_v_heads}) must be a multiple of "
                             f"model.gdn_heads ({self.gdn_heads})")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"model.qk_norm={self.qk_norm!r} must be one of {QK_NORMS} (True = 'head')")
        if self.norm_style not in NORM_STYLES:
            raise ValueError(f"model.norm_style={self.norm_style!r} must be one of {NORM_STYLES}")
        rotary = self.attn_head_dim * self.rotary_fraction
        if rotary != int(rotary) or int(rotary) % 2 or not 0 < rotary <= self.attn_head_dim:
            raise ValueError(f"model.rotary_fraction={self.rotary_fraction} must give an even number of rotary "
                             f"channels in (0, attn_head_dim={self.attn_head_dim}], got {rotary}")
        n = len(self.pattern)
        for name in LAYER_INDEX_FIELDS:
            if any(not 0 <= i < n for i in getattr(self, name)):
                raise ValueError(f"model.{name}={getattr(self, name)} must be layer indices in [0, {n})")
        if self.moe_layers and min(self.moe_experts, self.moe_hidden, self.moe_shared_hidden) < 1:
            raise ValueError(f"model.moe_layers={self.moe_layers} needs model.moe_experts, model.moe_hidden and "
                             f"model.moe_shared_hidden >= 1")
        if self.layer_windows and (len(self.layer_windows) != n or min(self.layer_windows) < 0):
            raise ValueError(f"model.layer_windows={self.layer_windows} must be empty or one window >= 0 "
                             f"per layer ({n})")
        if self.delta_rule_impl not in IMPLS:
            raise ValueError(f"model.delta_rule_impl={self.delta_rule_impl!r} must be one of {IMPLS}")
        if self.chunk_size not in CHUNK_SIZES:
            raise ValueError(f"model.chunk_size={self.chunk_size} must be one of {CHUNK_SIZES}")
        dtype_from_name(self.dtype, "model.dtype")
        dtype_from_name(self.param_dtype, "model.param_dtype")
        if self.ut_steps is not None and (int(self.ut_steps) < 1 or self.loop is not None):
            raise ValueError(f"model.ut_steps={self.ut_steps} must be None or >= 1, and a looped LM loops its whole "
                             f"stack (model.loop={self.loop} must be None)")
        if self.ut_exit not in UT_EXITS:
            raise ValueError(f"model.ut_exit={self.ut_exit!r} must be one of {UT_EXITS}")
        if (self.exit_gate or self.ut_exit != "last") and self.ut_steps is None:
            raise ValueError(f"model.exit_gate={self.exit_gate} / model.ut_exit={self.ut_exit!r} need model.ut_steps")
        if self.ut_exit != "last" and not self.exit_gate:
            raise ValueError(f"model.ut_exit={self.ut_exit!r} needs model.exit_gate=True")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def parameter_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def rotary_dim(self, index: int) -> int:
        """RoPE channels per head of layer `index` (0 = NoPE)."""
        return 0 if index in self.nope_layers else int(self.attn_head_dim * self.rotary_fraction)

    def layer_window(self, index: int) -> int:
        """Layer `index`'s own sliding window (0 = none)."""
        return self.layer_windows[index] if self.layer_windows else 0

    @property
    def depth(self) -> int:
        """Blocks run per pass: len(pattern), times ut_steps for a looped LM."""
        return len(self.pattern) * (self.ut_steps or 1)

    @property
    def layer_groups(self) -> tuple[range, range, range]:
        """(prelude, looped segment, coda) as ranges of block indices (of the unrolled stack)."""
        start, end = self.loop if self.loop is not None else (0, self.depth)
        return range(0, start), range(start, end), range(end, self.depth)


def layer_name(index: int) -> str:
    """Key of block `index` in the recurrent-state and key/value pytrees."""
    return f"layer{index}"


class HybridModel(nnx.Module):
    """Embedding, a stack of blocks from `config.pattern` (`layers.BLOCKS`), final RMSNorm, LM head;
    for a looped LM the stack unrolled `ut_steps` times (`self.blocks[u * n + i]` is block i) and
    the early-exit gate."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        param_dtype = config.parameter_dtype
        self.embedding = dense_param(rngs, (config.vocab_size, config.d_model), ("vocab", "embed"),
                                     fan_in=config.d_model, dtype=param_dtype)
        blocks = [BLOCKS[kind](config, i, rngs=rngs) for i, kind in enumerate(config.pattern)]
        self.blocks = nnx.List(blocks * (config.ut_steps or 1))
        if config.exit_gate:   # Linear(D, 1) with bias
            self.exit_gate = dense_param(rngs, (config.d_model,), ("embed",), fan_in=config.d_model, dtype=param_dtype)
            self.exit_gate_bias = make_param(jnp.zeros((1,), param_dtype), (None,))
        else:
            self.exit_gate = self.exit_gate_bias = None
        self.final_norm = RMSNorm(config.d_model, logical_axis="embed", eps=config.norm_eps,
                                  dtype=config.compute_dtype, param_dtype=param_dtype, style=config.norm_style)
        self.lm_head = None if config.tie_embeddings else dense_param(
            rngs, (config.d_model, config.vocab_size), ("embed", "vocab"), fan_in=config.d_model, dtype=param_dtype)

    # ---- structure -------------------------------------------------------------------------

    def gdn_layers(self, layers=None) -> list[str]:
        """Names of the blocks with recurrent state (GDN) among `layers` (block indices; default all)."""
        layers = range(len(self.blocks)) if layers is None else layers
        return [layer_name(i) for i in layers if self.blocks[i].has_state]

    def attention_layers(self, layers=None) -> list[str]:
        """Names of the blocks with keys/values (attention) among `layers` (default all)."""
        layers = range(len(self.blocks)) if layers is None else layers
        return [layer_name(i) for i in layers if self.blocks[i].has_kv]

    def init_state(self, batch: int, layers=None) -> dict:
        """Zero recurrent state for the GDN blocks among `layers` (default all)."""
        layers = range(len(self.blocks)) if layers is None else layers
        return {layer_name(i): self.blocks[i].init_state(batch) for i in layers if self.blocks[i].has_state}

    def init_kv(self, batch: int, length: int, layers=None) -> dict:
        """Zero keys/values [B, length, KVH, Dh] for the attention blocks among `layers` (default all)."""
        layers = range(len(self.blocks)) if layers is None else layers
        return {layer_name(i): self.blocks[i].init_kv(batch, length) for i in layers if self.blocks[i].has_kv}

    # ---- pure apply ------------------------------------------------------------------------

    def embed(self, tokens: jax.Array) -> jax.Array:
        """int tokens [B, T] -> hidden [B, T, D] in the compute dtype."""
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.config.compute_dtype)

    def close_step(self, index: int, hidden: jax.Array, exits: list | None = None) -> jax.Array:
        """The looped LM's one rule, applied after block `index` of the unrolled stack: the final
        norm closes every universal-transformer step (and the normed hidden is appended to `exits`).
        Identity for other models and inside a step."""
        if self.config.ut_steps is None or (index + 1) % len(self.config.pattern):
            return hidden
        hidden = self.final_norm(hidden)
        if exits is not None:
            exits.append(hidden)
        return hidden

    def exit_probabilities(self, exits) -> jax.Array:
        """Ouro's exit distribution: float32 [U, ...] from each step's normed hidden [U][..., D]:
        lambda_u = sigmoid(gate(h_u)), p_u = lambda_u * prod_{j<u} (1 - lambda_j), the last step
        taking what remains."""
        remaining, probabilities = None, []
        for u, h in enumerate(exits):
            gate = h.astype(jnp.float32) @ self.exit_gate[...].astype(jnp.float32) + self.exit_gate_bias[...][0]
            lam = jax.nn.sigmoid(gate.astype(jnp.float32))
            remaining = jnp.ones_like(lam) if remaining is None else remaining
            if u < len(exits) - 1:
                probabilities.append(lam * remaining)
                remaining = remaining * (1.0 - lam)
            else:
                probabilities.append(remaining)
        return jnp.stack(probabilities)

    def _exit_hidden(self, hidden: jax.Array, exits) -> jax.Array:
        """The hidden state the head reads under `config.ut_exit` (looped LMs)."""
        if self.config.ut_exit == "last":
            return hidden
        if not exits or len(exits) != self.config.ut_steps:
            raise ValueError(f"model.ut_exit={self.config.ut_exit!r} needs the {self.config.ut_steps} steps' normed "
                             f"hidden states (exits), got {0 if not exits else len(exits)}")
        p = self.exit_probabilities(exits)                                          # [U, ...]
        stacked = jnp.stack(exits)                                                  # [U, ..., D]
        if self.config.ut_exit == "expected":   # sum_u p_u head(h_u) = head(sum_u p_u h_u): the head is linear
            return jnp.sum(p[..., None] * stacked.astype(jnp.float32), axis=0).astype(hidden.dtype)
        reached = jnp.cumsum(p, axis=0) >= self.config.ut_exit_threshold
        step = jnp.where(jnp.any(reached, axis=0), jnp.argmax(reached, axis=0), len(exits) - 1)
        return jnp.take_along_axis(stacked, step[None, ..., None], axis=0)[0]

    def logits(self, hidden: jax.Array, exits: list | None = None) -> jax.Array:
        """hidden [..., D] -> float32 logits [..., vocab]: final RMSNorm, then the LM head. A looped
        LM's hidden is already normed (`close_step`); `exits` (each step's normed hidden, from
        `apply_blocks`) feed its exit rule (`config.ut_exit`)."""
        h = self.final_norm(hidden) if self.config.ut_steps is None else self._exit_hidden(hidden, exits)
        if self.lm_head is None:
            w = self.embedding[...].astype(h.dtype).T
        else:
            w = self.lm_head[...].astype(h.dtype)
        return (h @ w).astype(jnp.float32)

    def apply_blocks(self, hidden: jax.Array, positions: jax.Array, state: dict, layers, *,
                     past: dict | None = None, past_positions: jax.Array | None = None,
                     window: int | None = None, eviction: str = "hard", exits: list | None = None):
        """Run blocks `layers` (a range of block indices) once over a span of tokens.

        Args:
          hidden: [B, T, D]; positions: [T] int32 absolute positions.
          state: recurrent state holding (at least) the GDN blocks among `layers`.
          past: None, or keys/values [B, S, KVH, Dh] of earlier tokens for every attention block
            among `layers`, at positions past_positions [S] (negative = empty).
          window, eviction: the attention mask rule (`sleep_jax.layers.attention_mask`).
          exits: a list receiving each closed universal-transformer step's normed hidden (looped LMs).
        Returns:
          (hidden [B, T, D], state with those GDN entries updated, {name: {"k", "v"}} of this span
          for the attention blocks among `layers`).
        """
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction={eviction!r} must be one of {EVICTIONS}")
        state = dict(state)
        kv = {}
        for i in layers:
            block, name = self.blocks[i], layer_name(i)
            hidden, layer_state, layer_kv = block(
                hidden, positions, state.get(name), past=past[name] if past is not None and block.has_kv else None,
                past_positions=past_positions, window=window, eviction=eviction)
            if block.has_state:
                state[name] = layer_state
            if block.has_kv:
                kv[name] = layer_kv
            hidden = self.close_step(i, hidden, exits)
        return hidden, state, kv

    def forward_span(self, hidden: jax.Array, positions: jax.Array, state: dict, **attention):
        """Every block once over a span, then the readout: (logits float32 [B, T, vocab], state,
        this span's keys/values). `attention`: past, past_positions, window, eviction as in
        `apply_blocks`."""
        exits = []
        hidden, state, kv = self.apply_blocks(hidden, positions, state, range(len(self.blocks)), exits=exits,
                                              **attention)
        return self.logits(hidden, exits), state, kv

    def __call__(self, tokens: jax.Array, *, state: dict | None = None, positions: jax.Array | None = None,
                 window: int | None = None, eviction: str = "hard"):
        """One ordinary forward pass over a whole sequence (no sleep).

        Args:
          tokens: int [B, T]. state: initial recurrent state (default zeros).
          positions: [T] absolute positions (default 0..T-1).
          window, eviction: attention mask rule; window=None is full causal attention.
        Returns:
          (logits float32 [B, T, vocab], final recurrent state).
        """
        batch, steps = tokens.shape
        state = self.init_state(batch) if state is None else state
        positions = jnp.arange(steps, dtype=jnp.int32) if positions is None else positions
        logits, state, _ = self.forward_span(self.embed(tokens), positions, state, window=window, eviction=eviction)
        return logits, state

    # ---- decoding --------------------------------------------------------------------------

    def init_cache(self, batch: int, capacity: int) -> dict:
        """Empty decoding cache: {"positions": [B, capacity] int32 (-1 = empty), "layers": keys/values}."""
        return {"positions": jnp.full((batch, capacity), -1, jnp.int32), "layers": self.init_kv(batch, capacity)}

    def decode_step(self, tokens: jax.Array, position, state: dict, cache: dict, *, window: int | None,
                    eviction: str = "hard"):
        """One token through the whole stack (one pass), as in wake.

        Args:
          tokens: int [B], the tokens at absolute positions `position` (int32 [B], one per row, or
            a scalar for the whole batch).
          state: recurrent state. cache: from `init_cache`; per row a ring buffer whose slot
            position % C receives this token (C >= window keeps every key the mask allows).
          window, eviction: attention mask rule, as in the windowed forward.
        Returns:
          (logits float32 [B, vocab] predicting the next token, new state, new cache).
        """
        batch, capacity = cache["positions"].shape
        position = jnp.broadcast_to(jnp.asarray(position, jnp.int32), (batch,))
        if window is not None and capacity < window:
            raise ValueError(f"decode_step: cache capacity {capacity} must be >= window={window}")
        written = jnp.arange(capacity) == (position % capacity)[:, None]             # [B, C]
        positions = jnp.where(written, position[:, None], cache["positions"])
        layers = dict(cache["layers"])
        state = dict(state)
        hidden = self.embed(tokens[:, None])[:, 0]
        exits = []
        for i, block in enumerate(self.blocks):
            name = layer_name(i)
            hidden, layer_state, layer_cache = block.step(hidden, position, state.get(name), layers.get(name),
                                                          positions, window=window, eviction=eviction)
            if block.has_state:
                state[name] = layer_state
            if block.has_kv:
                layers[name] = layer_cache
            hidden = self.close_step(i, hidden, exits)
        return self.logits(hidden, exits), state, {"positions": positions, "layers": layers}
