"""Sleep: windows, consolidation (a scan over N passes), prediction, eviction and remat.

A sequence of T tokens is split into T / L windows of L tokens, read in order with the recurrent
state (fast weights + conv tails) carried from window to window, starting at zero:

- a consolidation window ("C") is embedded once, then the looped layer segment runs N passes as a
  `lax.scan` carrying (window hidden states, segment recurrent state): pass n reads the hidden
  states pass n-1 wrote, S is never reset, and each pass restores the conv tails to their value at
  window entry (it re-reads the window from its start). Afterwards the hidden states and the
  window's keys/values are dropped; only the recurrent state moves on (and, for sliding eviction,
  the final pass's keys/values, which the next window may still attend to).
- a prediction window ("P") is one ordinary pass; its logits are scored with masked cross-entropy.

Runs of consecutive windows of one kind are a `lax.scan` over windows, so the traced program grows
with the number of runs in `kinds`, not with the number of windows, and not with N.

Eviction: "hard": a token attends causally within its window only. "sliding": a token attends to
the most recent L tokens (the previous window's keys/values are those of its final pass).

Remat (`jax.checkpoint`, policy `nothing_saveable` at the chosen boundary):
- "none": every pass's activations are kept for the backward pass;
- "pass": each pass is rematerialised, so each pass costs only its carry in memory;
- "window": each window is rematerialised, so only window-entry carries are kept across windows
  (one window's N passes are recomputed with all their activations during its backward);
- "sqrt": passes run as an outer scan of ~sqrt(N) rematerialised groups of ~sqrt(N) rematerialised
  passes: O(sqrt(N)) carries for deep sleeps, at about one more forward of recomputation.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from sleep_jax.layers import EVICTIONS

REMATS = ("none", "pass", "window", "sqrt")
WINDOW_KINDS = ("C", "P")
# What a rematerialised pass / window / group of passes keeps for the backward pass: its inputs only.
REMAT_POLICY = jax.checkpoint_policies.nothing_saveable


@dataclasses.dataclass(frozen=True)
class SleepConfig:
    """The `sleep` block of a config, field for field."""
    passes: int = 1            # N: passes over each consolidation window
    window: int = 24           # L: tokens per window (the attention span)
    eviction: str = "hard"     # "hard" | "sliding"
    remat: str = "none"        # "none" | "pass" | "window" | "sqrt"
    truncate_passes: int = 0   # 0: backprop through all passes; k > 0: only through the last k of each sleep

    def __post_init__(self):
        if int(self.passes) < 1:
            raise ValueError(f"sleep.passes >= 1 required, got {self.passes}")
        if int(self.window) < 1:
            raise ValueError(f"sleep.window >= 1 required, got {self.window}")
        if self.eviction not in EVICTIONS:
            raise ValueError(f"sleep.eviction={self.eviction!r} must be one of {EVICTIONS}")
        if self.remat not in REMATS:
            raise ValueError(f"sleep.remat={self.remat!r} must be one of {REMATS}")
        if int(self.truncate_passes) < 0:
            raise ValueError(f"sleep.truncate_passes >= 0 required, got {self.truncate_passes}")


def kinds_from_mask(loss_mask, window: int) -> str:
    """Host-side helper: "P" for each window where any row of loss_mask [B, T] is scored, else "C"."""
    mask = np.asarray(loss_mask)
    if mask.ndim != 2 or mask.shape[1] % window:
        raise ValueError(f"loss_mask must be [B, T] with T a multiple of window={window}, got {mask.shape}")
    scored = mask.reshape(mask.shape[0], -1, window).any(axis=(0, 2))
    return "".join("P" if s else "C" for s in scored)


def window_runs(kinds: str) -> list[tuple[str, int, int]]:
    """Maximal runs of one window kind: [(kind, first window, number of windows)]."""
    runs = []
    for index, kind in enumerate(kinds):
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((kind, index, 1))
    return runs


# ---- passes --------------------------------------------------------------------------------

def _stop_gradient_where(condition, tree):
    """tree, with its gradient cut where the traced bool `condition` holds."""
    return jax.tree.map(lambda x: jnp.where(condition, jax.lax.stop_gradient(x), x), tree)


def run_passes(one_pass, carry, *, passes: int, remat: str = "none", truncate_passes: int = 0):
    """Apply `one_pass` (carry -> carry) `passes` times as a scan (never unrolled).

    remat "pass" checkpoints each pass; "sqrt" nests a scan of ~sqrt(passes) checkpointed passes
    inside a checkpointed outer scan; other values keep all activations. truncate_passes k in
    (0, passes): the gradient flows only through the last k passes (cut on entry to pass passes-k).
    """
    cut = passes - truncate_passes if 0 < truncate_passes < passes else None
    body = jax.checkpoint(one_pass, policy=REMAT_POLICY, prevent_cse=False) if remat in ("pass", "sqrt") else one_pass

    def step(carry, index):
        if cut is not None:
            carry = _stop_gradient_where(index == cut, carry)
        return body(carry), None

    indices = jnp.arange(passes, dtype=jnp.int32)
    if remat != "sqrt":
        return jax.lax.scan(step, carry, indices)[0]
    group = math.ceil(math.sqrt(passes))
    outer = passes // group

    def group_step(carry, group_indices):
        return jax.lax.scan(step, carry, group_indices)[0], None

    group_step = jax.checkpoint(group_step, policy=REMAT_POLICY, prevent_cse=False)
    carry = jax.lax.scan(group_step, carry, indices[:outer * group].reshape(outer, group))[0]
    if outer * group < passes:
        carry = jax.lax.scan(step, carry, indices[outer * group:])[0]
    return carry


# ---- one window ----------------------------------------------------------------------------

def _attention_args(window_index, past, sleep: SleepConfig):
    """(positions [L], keyword arguments of `HybridModel.apply_blocks`) for window `window_index`."""
    positions = window_index * sleep.window + jnp.arange(sleep.window, dtype=jnp.int32)
    kwargs = dict(window=sleep.window, eviction=sleep.eviction)
    if sleep.eviction == "sliding":
        kwargs.update(past=past, past_positions=positions - sleep.window)
    return positions, kwargs


def initial_past(model, batch: int, sleep: SleepConfig) -> dict:
    """The keys/values a first window may attend to: none (an empty dict for hard eviction,
    zero-filled slots at negative positions, hence masked, for sliding)."""
    return model.init_kv(batch, sleep.window) if sleep.eviction == "sliding" else {}


def consolidate(model, tokens, window_index, state: dict, past: dict, *, sleep: SleepConfig):
    """Sleep on one window: embed once, N passes of the looped segment, prelude/coda once.

    Args:
      model: HybridModel. tokens: int [B, L]. window_index: int32 scalar (positions start at
        window_index * L). state: recurrent state at window entry.
      past: keys/values of the previous window (sliding eviction; `initial_past` for the first),
        ignored for hard eviction.
    Returns:
      (recurrent state after the sleep, keys/values of the window's final pass for every attention
      block under sliding eviction, else {}).
    """
    prelude, segment, coda = model.config.layer_groups
    positions, kwargs = _attention_args(window_index, past, sleep)
    sliding = sleep.eviction == "sliding"
    hidden, state, kv = model.apply_blocks(model.embed(tokens), positions, state, prelude, **kwargs)

    looped = model.gdn_layers(segment)
    conv_at_entry = {name: state[name]["conv"] for name in looped}

    def one_pass(carry):
        hidden, looped_state, _ = carry
        looped_state = {name: {"S": looped_state[name]["S"], "conv": conv_at_entry[name]} for name in looped}
        hidden, looped_state, pass_kv = model.apply_blocks(hidden, positions, looped_state, segment, **kwargs)
        return hidden, looped_state, (pass_kv if sliding else {})

    carry = (hidden, {name: state[name] for name in looped},
             model.init_kv(tokens.shape[0], sleep.window, segment) if sliding else {})
    hidden, looped_state, pass_kv = run_passes(one_pass, carry, passes=sleep.passes, remat=sleep.remat,
                                               truncate_passes=sleep.truncate_passes)
    state = {**state, **looped_state}
    _, state, coda_kv = model.apply_blocks(hidden, positions, state, coda, **kwargs)
    return state, ({**kv, **pass_kv, **coda_kv} if sliding else {})


def predict(model, tokens, window_index, state: dict, past: dict, *, sleep: SleepConfig):
    """One ordinary pass over a prediction window.

    Arguments as in `consolidate`. Returns (logits float32 [B, L, vocab], recurrent state after
    the window, keys/values for the next window under sliding eviction, else {}).
    """
    positions, kwargs = _attention_args(window_index, past, sleep)
    hidden, state, kv = model.apply_blocks(model.embed(tokens), positions, state, range(len(model.blocks)),
                                           **kwargs)
    return model.logits(hidden), state, (kv if sleep.eviction == "sliding" else {})


# ---- the sequence --------------------------------------------------------------------------

def _check_sequence(tokens, loss_mask, sleep, kinds):
    if not isinstance(sleep, SleepConfig):
        raise ValueError(f"sleep must be a SleepConfig, got {type(sleep).__name__}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be int [B, T], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be an integer array, got {tokens.dtype}")
    if loss_mask is not None and loss_mask.shape != tokens.shape:
        raise ValueError(f"loss_mask shape {loss_mask.shape} must equal tokens shape {tokens.shape}")
    steps = tokens.shape[1]
    if steps % sleep.window:
        raise ValueError(f"tokens length T={steps} must be a multiple of sleep.window={sleep.window}")
    if not isinstance(kinds, str) or len(kinds) != steps // sleep.window:
        raise ValueError(f"kinds={kinds!r}: its length must equal T / window = {steps} / {sleep.window} "
                         f"= {steps // sleep.window}")
    if any(k not in WINDOW_KINDS for k in kinds):
        raise ValueError(f"kinds={kinds!r} may only hold the letters {WINDOW_KINDS}")


def _walk_windows(model, tokens, loss_mask, score, *, sleep: SleepConfig, kinds: str):
    """Read the windows in order; return score(logits, targets, mask) per prediction window.

    score maps (logits f32 [B, L, V], targets int32 [B, L], mask f32 [B, L]) to a pytree of [B, L]
    arrays. Returns that pytree assembled to [B, T] (zeros in consolidation windows).
    """
    _check_sequence(tokens, loss_mask, sleep, kinds)
    batch, steps = tokens.shape
    length, count = sleep.window, steps // sleep.window
    tokens = tokens.astype(jnp.int32)
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    mask = jnp.zeros(tokens.shape, jnp.float32) if loss_mask is None else loss_mask.astype(jnp.float32)
    mask = mask.at[:, -1].set(0.0)  # the last position has no next token to predict

    def by_window(x):  # [B, T] -> [W, B, L]
        return x.reshape(batch, count, length).swapaxes(0, 1)

    windows = (by_window(tokens), by_window(targets), by_window(mask), jnp.arange(count, dtype=jnp.int32))
    logits_shape = jax.ShapeDtypeStruct((batch, length, model.config.vocab_size), jnp.float32)
    score_shape = jax.eval_shape(score, logits_shape, jax.ShapeDtypeStruct((batch, length), jnp.int32),
                                 jax.ShapeDtypeStruct((batch, length), jnp.float32))

    def consolidation_window(carry, window):
        state, past = carry
        tok, _, _, index = window
        return consolidate(model, tok, index, state, past, sleep=sleep), None

    def prediction_window(carry, window):
        state, past = carry
        tok, tgt, msk, index = window
        logits, state, kv = predict(model, tok, index, state, past, sleep=sleep)
        return (state, kv), score(logits, tgt, msk)

    if sleep.remat == "window":
        checkpoint = lambda f: jax.checkpoint(f, policy=REMAT_POLICY, prevent_cse=False)
        consolidation_window, prediction_window = checkpoint(consolidation_window), checkpoint(prediction_window)

    carry = (model.init_state(batch), initial_past(model, batch, sleep))
    outputs = []
    for kind, first, n in window_runs(kinds):
        run = jax.tree.map(lambda x: x[first:first + n], windows)
        if kind == "C":
            carry, _ = jax.lax.scan(consolidation_window, carry, run)
            outputs.append(jax.tree.map(lambda s: jnp.zeros((n, *s.shape), s.dtype), score_shape))
        else:
            carry, scored = jax.lax.scan(prediction_window, carry, run)
            outputs.append(scored)
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outputs)           # [W, B, L, ...]
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(batch, steps, *x.shape[3:]), stacked)


def _token_scores(logits, targets, mask):
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"nll": (log_z - target_logit) * mask, "correct": correct * mask, "mask": mask}


def sequence_loss(model, tokens, loss_mask, *, sleep: SleepConfig, kinds: str):
    """Mean masked next-token cross-entropy over a sequence read window by window with sleep.

    Args:
      model: HybridModel. tokens: int [B, T]. loss_mask: [B, T]; 1 = the logits at i (predicting
        token i+1) are scored; the last position is never scored.
      sleep: SleepConfig. kinds: static str, one letter per window ("C" consolidation, "P" prediction);
        masks in consolidation windows are ignored.
    Returns:
      (loss, metrics) with metrics "loss", "token_accuracy" (over scored tokens), "sequence_accuracy"
      (rows with every scored token right, among rows with any), "scored" (number of scored tokens).
    """
    scores = _walk_windows(model, tokens, loss_mask, _token_scores, sleep=sleep, kinds=kinds)
    scored = jnp.sum(scores["mask"])
    denominator = jnp.maximum(scored, 1.0)
    loss = jnp.sum(scores["nll"]) / denominator
    rows_scored = jnp.sum(scores["mask"], axis=1) > 0
    rows_right = jnp.sum(scores["correct"], axis=1) == jnp.sum(scores["mask"], axis=1)
    metrics = {
        "loss": loss,
        "token_accuracy": jnp.sum(scores["correct"]) / denominator,
        "sequence_accuracy": jnp.sum(rows_scored & rows_right) / jnp.maximum(jnp.sum(rows_scored), 1),
        "scored": scored,
    }
    return loss, metrics


def sequence_predictions(model, tokens, loss_mask, *, sleep: SleepConfig, kinds: str) -> jax.Array:
    """Greedy next-token predictions int32 [B, T] (position i predicts token i+1); 0 in consolidation windows."""
    score = lambda logits, targets, mask: jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return _walk_windows(model, tokens, loss_mask, score, sleep=sleep, kinds=kinds)


def sequence_logits(model, tokens, *, sleep: SleepConfig, kinds: str) -> jax.Array:
    """Logits float32 [B, T, vocab] of the prediction windows (0 in consolidation windows)."""
    return _walk_windows(model, tokens, None, lambda logits, targets, mask: logits, sleep=sleep, kinds=kinds)
