"""The hybrid attention / Gated DeltaNet stack, its config, and its recurrent-state and KV-cache pytrees.

`ModelConfig` is the `model` block of a config: the stack's own fields (`StackFields`) and each
block kind's config group (`layers.KINDS[*].mixer.fields`), under flat `model.*` names.

`HybridModel` holds parameters only. Everything that changes while reading a sequence lives in
explicit pytrees passed in and out:

- recurrent state: {"layer{i}": {"S": [B, HV, K, V] float32, "conv": [B, kernel-1, C]}} for every
  stateful block i (GDN, JetBlock, Hebbian: the fast weights and the conv tail);
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

from sleep_jax import windows
from sleep_jax.layers import KINDS, Block, HaltingHead, NORM_STYLES, RMSNorm
from sleep_jax.layers.common import dense, dense_param, dense_rows, dtype_from_name, make_param
from sleep_jax.layers.mixer import Fields
from sleep_jax.ops.common import check_options

UT_EXITS = ("last", "expected", "threshold")


@dataclasses.dataclass(frozen=True)
class StackFields(Fields):
    """The stack's own `model.*` keys: sizes, the pattern and its looped segment, the feed-forward
    halves, norms, dtypes, the fast-weight op's form, and the looped LM (Ouro)."""
    vocab_size: int
    d_model: int = 128
    pattern: str = "AGAG"                 # one block kind per layer: a letter of layers.KINDS
    loop: tuple[int, int] | None = None   # looped segment [start, end) of the pattern; None = whole stack
    mlp_hidden: int = 512
    no_mlp_layers: tuple[int, ...] = ()   # layers without a feed-forward half
    moe_layers: tuple[int, ...] = ()      # layers whose feed-forward half is a SparseMoE (layers.moe)
    moe_experts: int = 0
    moe_top_k: int = 1
    moe_hidden: int = 0                   # per routed expert
    moe_shared_hidden: int = 0            # the gated shared expert
    moe_normalize_top_k: bool = True
    norm_style: str = "plain"             # "plain" w * x_hat, or "zero_centred" (1 + w) * x_hat
    tie_embeddings: bool = True
    dtype: str = "float32"                # compute dtype
    param_dtype: str = "float32"
    delta_rule_impl: str = "auto"         # the form of every fast-weight op (ops.common.IMPLS)
    chunk_size: int = 64
    norm_eps: float = 1e-6
    hf_model_type: str | None = None      # the hub architecture this follows (sleep_jax.hf), None = native
    # looped LM (Ouro): the stack runs ut_steps times per pass, the final norm after every step
    ut_steps: int | None = None           # None = not a looped LM (final norm only before the head)
    exit_gate: bool = False               # Ouro's early-exit gate: Linear(D, 1) + bias on each step's normed hidden
    ut_exit: str = "last"                 # readout: "last" step, "expected" (exit-pdf weighted logits, Ouro's
                                          # training loss) or "threshold" (first step whose cumulative exit
    ut_exit_threshold: float = 1.0        # probability reaches ut_exit_threshold; the last if none does)
    halting_head: bool = False            # adaptive sleep's halting head (layers.halting), for sleep.halting="learned"
    layer_index_fields = ("no_mlp_layers", "moe_layers")

    def __post_init__(self):
        if self.loop is not None:
            self._set("loop", tuple(int(i) for i in self.loop))
        if not isinstance(self.pattern, str):
            self._set("pattern", "".join(self.pattern))
        self._at_least_one("vocab_size", "d_model", "mlp_hidden")
        if not self.pattern or any(c not in KINDS for c in self.pattern):
            raise ValueError(f"model.pattern={self.pattern!r} must be a non-empty string of {''.join(KINDS)}")
        if self.loop is not None:
            if len(self.loop) != 2 or not 0 <= self.loop[0] < self.loop[1] <= len(self.pattern):
                raise ValueError(f"model.loop={self.loop} must be (start, end) with 0 <= start < end <= "
                                 f"len(model.pattern)={len(self.pattern)}")
        if self.moe_layers and min(self.moe_experts, self.moe_hidden, self.moe_shared_hidden) < 1:
            raise ValueError(f"model.moe_layers={self.moe_layers} needs model.moe_experts, model.moe_hidden and "
                             f"model.moe_shared_hidden >= 1")
        if self.norm_style not in NORM_STYLES:
            raise ValueError(f"model.norm_style={self.norm_style!r} must be one of {NORM_STYLES}")
        check_options(self.delta_rule_impl, self.chunk_size, impl_key="model.delta_rule_impl",
                      chunk_key="model.chunk_size", where=None)
        for letter in sorted(set(self.pattern)):
            impls = KINDS[letter].mixer.impls
            if impls is not None and self.delta_rule_impl not in impls:
                raise ValueError(f"model.delta_rule_impl={self.delta_rule_impl!r}: the {letter!r} blocks of "
                                 f"model.pattern have no such form; one of {impls}")
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
        if not isinstance(self.halting_head, bool):
            raise ValueError(f"model.halting_head must be True or False, got {self.halting_head!r}")


# The config groups a ModelConfig holds: the stack's, then each mixer's (in registry order, once).
FIELD_GROUPS = tuple(dict.fromkeys([StackFields] + [kind.mixer.fields for kind in KINDS.values()
                                                    if kind.mixer.fields is not None]))
# Per-layer options: tuples of layer indices, and tuples of one value per layer (empty = none).
# Validated against the pattern here, and moved with their layers by `hf.insert.insert_blocks`.
LAYER_INDEX_FIELDS = tuple(name for group in FIELD_GROUPS for name in group.layer_index_fields)
LAYER_VALUE_FIELDS = tuple(name for group in FIELD_GROUPS for name in group.layer_value_fields)


def group_keys(group: type[Fields]) -> tuple[str, ...]:
    """The `model.*` keys of a config group."""
    return tuple(field.name for field in dataclasses.fields(group))


def new_kind_keys(pattern: str, kind: str) -> tuple[str, ...]:
    """The `model.*` keys that shape a block of `kind` and that no layer of `pattern` reads: its
    mixer's config group, when no kind in `pattern` shares that group (e.g. the `jet_*` keys for
    JetBlocks inserted into Ouro); else (). A fine-tuning run chooses these itself."""
    group = KINDS[kind].mixer.fields if kind in KINDS else None
    if group is None or any(KINDS[letter].mixer.fields is group for letter in pattern):
        return ()
    return group_keys(group)


class _ModelConfigBase:
    """What `ModelConfig` adds to its fields: each group's own checks, the rules across groups
    (per-layer options against the pattern), and the derived sizes."""

    def __post_init__(self):
        for group in FIELD_GROUPS:   # each group checks and normalises its own values
            checked = group(**{name: getattr(self, name) for name in group_keys(group)})
            for name in group_keys(group):
                object.__setattr__(self, name, getattr(checked, name))
        n = len(self.pattern)
        for name in LAYER_INDEX_FIELDS + LAYER_VALUE_FIELDS:
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
        for name in LAYER_INDEX_FIELDS:
            if any(not 0 <= i < n for i in getattr(self, name)):
                raise ValueError(f"model.{name}={getattr(self, name)} must be layer indices in [0, {n})")
        for name in LAYER_VALUE_FIELDS:
            if getattr(self, name) and len(getattr(self, name)) != n:
                raise ValueError(f"model.{name}={getattr(self, name)} must be empty or one value per layer ({n})")
        if self.halting_head and not self.looped_stateful:
            raise ValueError(f"model.halting_head=True reads the fast weights of the looped segment, but "
                             f"model.pattern={self.pattern!r} (model.loop={self.loop}) has no stateful block there")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def parameter_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def depth(self) -> int:
        """Blocks run per pass: len(pattern), times ut_steps for a looped LM."""
        return len(self.pattern) * (self.ut_steps or 1)

    @property
    def looped_stateful(self) -> int:
        """The number of stateful blocks (GDN, JetBlock, ...) in the looped segment: what adaptive
        sleep reads (`sleep.halting` "converged" and "learned" need at least one)."""
        letters = self.pattern * (self.ut_steps or 1)
        return sum(KINDS[letters[i]].mixer.has_state for i in self.layer_groups[1])

    @property
    def layer_groups(self) -> tuple[range, range, range]:
        """(prelude, looped segment, coda) as ranges of block indices (of the unrolled stack)."""
        start, end = self.loop if self.loop is not None else (0, self.depth)
        return range(0, start), range(start, end), range(end, self.depth)


def _model_config_class():
    fields = [(f.name, f.type, dataclasses.field(default=f.default))
              for group in FIELD_GROUPS for f in dataclasses.fields(group)]
    cls = dataclasses.make_dataclass("ModelConfig", fields, bases=(_ModelConfigBase,), frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = """The `model` block of a config, field for field (frozen dataclass).

    Its fields are those of its config groups (`FIELD_GROUPS`): the stack's (`StackFields`) and
    each block kind's mixer's (`AttentionFields`, `GDNFields`, `JetFields`, ...), under their flat
    `model.*` names. Construction runs each group's checks (errors name the key, e.g.
    `model.loop`), then the per-layer options against the pattern."""
    return cls


ModelConfig = _model_config_class()


def layer_name(index: int) -> str:
    """Key of block `index` in the recurrent-state and key/value pytrees."""
    return f"layer{index}"


class HybridModel(nnx.Module):
    """Embedding, a stack of blocks from `config.pattern` (`layers.Block`), final RMSNorm, LM head;
    for a looped LM the stack unrolled `ut_steps` times (`self.blocks[u * n + i]` is block i) and
    the early-exit gate; with `config.halting_head` adaptive sleep's halting head."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        param_dtype = config.parameter_dtype
        self.embedding = dense_param(rngs, (config.vocab_size, config.d_model), ("vocab", "embed"),
                                     fan_in=config.d_model, dtype=param_dtype)
        blocks = [Block(config, i, rngs=rngs) for i in range(len(config.pattern))]
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
        # Built last and without a random draw, so every other parameter is as without it.
        self.halting_head = (HaltingHead(config.d_model, config.looped_stateful, param_dtype=param_dtype)
                             if config.halting_head else None)

    # ---- structure -------------------------------------------------------------------------

    def stateful_layers(self, layers=None) -> list[str]:
        """Names of the blocks with recurrent state (GDN, JetBlock, ...) among `layers` (block
        indices; default all)."""
        layers = range(len(self.blocks)) if layers is None else layers
        return [layer_name(i) for i in layers if self.blocks[i].has_state]

    def attention_layers(self, layers=None) -> list[str]:
        """Names of the blocks with keys/values (attention) among `layers` (default all)."""
        layers = range(len(self.blocks)) if layers is None else layers
        return [layer_name(i) for i in layers if self.blocks[i].has_kv]

    def init_state(self, batch: int, layers=None) -> dict:
        """Zero recurrent state for the stateful blocks among `layers` (default all)."""
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
            return dense_rows(h, self.embedding[...].astype(h.dtype)).astype(jnp.float32)
        return dense(h, self.lm_head[...].astype(h.dtype)).astype(jnp.float32)

    def apply_blocks(self, hidden: jax.Array, span: windows.Span, state: dict, layers, *,
                     past: dict | None = None, exits: list | None = None):
        """Run blocks `layers` (a range of block indices) once over a span of tokens.

        Args:
          hidden: [B, T, D] at span.positions [T]; `span` also says what the queries may see.
          state: recurrent state holding (at least) the stateful blocks among `layers`.
          past: None, or keys/values [B, S, KVH, Dh] of earlier tokens for every attention block
            among `layers`, at span.past_positions [S] (negative = empty).
          exits: a list receiving each closed universal-transformer step's normed hidden (looped LMs).
        Returns:
          (hidden [B, T, D], state with those entries updated, {name: {"k", "v"}} of this span
          for the attention blocks among `layers`).
        """
        state = dict(state)
        kv = {}
        for i in layers:
            block, name = self.blocks[i], layer_name(i)
            hidden, layer_state, layer_kv = block(hidden, state.get(name),
                                                  past[name] if past is not None and block.has_kv else None, span)
            if block.has_state:
                state[name] = layer_state
            if block.has_kv:
                kv[name] = layer_kv
            hidden = self.close_step(i, hidden, exits)
        return hidden, state, kv

    def forward_span(self, hidden: jax.Array, span: windows.Span, state: dict, *, past: dict | None = None):
        """Every block once over a span, then the readout: (logits float32 [B, T, vocab], state,
        this span's keys/values). Arguments as in `apply_blocks`."""
        exits = []
        hidden, state, kv = self.apply_blocks(hidden, span, state, range(len(self.blocks)), past=past, exits=exits)
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
        span = windows.Span(positions, window=window, eviction=eviction)
        logits, state, _ = self.forward_span(self.embed(tokens), span, state)
        return logits, state

    # ---- decoding --------------------------------------------------------------------------

    def init_cache(self, batch: int, capacity: int) -> dict:
        """Empty decoding cache: {"positions": [B, capacity] int32 (-1 = empty), "layers": keys/values}."""
        return {"positions": windows.empty_positions(batch, capacity), "layers": self.init_kv(batch, capacity)}

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
        batch = cache["positions"].shape[0]
        position = jnp.broadcast_to(jnp.asarray(position, jnp.int32), (batch,))
        token = windows.ring_token(position, cache["positions"], window=window, eviction=eviction)
        layers = dict(cache["layers"])
        state = dict(state)
        hidden = self.embed(tokens[:, None])[:, 0]
        exits = []
        for i, block in enumerate(self.blocks):
            name = layer_name(i)
            hidden, layer_state, layer_cache = block.step(hidden, state.get(name), layers.get(name), token)
            if block.has_state:
                state[name] = layer_state
            if block.has_kv:
                layers[name] = layer_cache
            hidden = self.close_step(i, hidden, exits)
        return self.logits(hidden, exits), state, {"positions": token.cache_positions, "layers": layers}
