"""Sleep: windows, consolidation (a scan over N passes), prediction, eviction and remat.

A sequence of T tokens is split into T / L windows of L tokens, read in order with the recurrent
state (fast weights + conv tails) carried from window to window, starting at zero:

- a consolidation window ("C") is embedded once, then the looped layer segment runs N passes
  carrying (window hidden states, segment recurrent state): pass n reads the hidden
  states pass n-1 wrote, S is never reset, and each pass restores the conv tails to their value at
  window entry (it re-reads the window from its start). Afterwards the hidden states and the
  window's keys/values are dropped; only the recurrent state moves on (and, for sliding eviction,
  the final pass's keys/values, which the next window may still attend to).
- a prediction window ("P") is one ordinary pass; its logits are scored with masked cross-entropy.

Runs of consecutive windows of one kind are scans over windows (for consolidation runs: the prelude
as a scan over windows, the (window, pass) steps of the looped segment as one scan, the coda as a
scan over windows, since no layer group reads a later group's output), so the traced program grows
with the number of runs in `kinds`, not with the number of windows, and not with N.

Eviction: "hard": a token attends causally within its window only. "sliding": a token attends to
the most recent L tokens (the previous window's keys/values are those of its final pass).

Remat (`jax.checkpoint`, policy `nothing_saveable` at the chosen boundary), planned once per
`SleepConfig.remat` (`REMAT_PLANS`):
- "none": every pass's activations are kept for the backward pass;
- "pass": each pass is rematerialised, so each pass costs only its carry in memory;
- "window": each window is rematerialised, so only window-entry carries are kept across windows
  (one window's N passes are recomputed with all their activations during its backward);
- "sqrt": the (window, pass) steps of a run of n consolidation windows run as an outer scan of
  rematerialised groups of ~sqrt(n N) rematerialised passes (`sqrt_group`): O(sqrt(n N)) carries
  for deep sleeps, at about one more forward of recomputation.

Truncated backprop (`truncate_passes = k`, 0 < k < N) cuts depth, not the path through time: the
first N - k passes of each window run without gradient (no activations kept: they are not
differentiated at all), and their effect enters as a straight-through update,

    S_after_early = S_entry + stop_gradient(S_early - S_entry)      (same for the hidden states),

so the forward pass is unchanged, d S_after_early / d S_entry = I, and the last k passes are
differentiated exactly. The gradient thus still reaches every earlier window (through S_entry,
which carries all of them) and the prelude and embedding (through the hidden states); what is
dropped is only the early passes' own Jacobian and their parameter gradient. Stopping the gradient
on the whole state instead (the earlier rule) cut every earlier window off the loss. The identity
Jacobian is the natural choice here: a pass adds a delta-rule update to S, so S_early - S_entry
is the early passes' additive contribution, and the identity is the exact Jacobian of S through
that sum when the update is treated as a constant (as in truncated BPTT with a skip path).

Adaptive sleep (`sleep.halting`, `sleep_jax.halting`): a window may stop before N passes, per
batch row ("converged": once its fast weights stop changing; "learned": by the model's halting
head). Training keeps the scan at N steps per window and leaves each row's stopping-pass values;
eval and the engine really stop (`stop_early`: a while loop over passes). "fixed" is the N-pass
program above, unchanged.

Recurrent-state contract (generic over block kinds): each stateful block's state is a dict; its
entry `FAST_WEIGHTS` ("S") is carried from pass to pass and window to window; every other entry
(the conv tail, ...) is a tail of the token sequence, so each pass restarts from its value at
window entry. Across a window boundary only S crosses (`window_entry`: the next window's tails
start from zeros, as the paper's Algorithm 1 passes only S), unless `sleep.carry_conv_tail`, when
the final pass's tails move on too.
"""
import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax import halting as halting_lib
from sleep_jax import windows
from sleep_jax.layers.mixer import FAST_WEIGHTS   # carried across passes; the other entries restart

WINDOW_KINDS = ("C", "P")
# What a rematerialised pass / window / group of passes keeps for the backward pass: its inputs only.
REMAT_POLICY = jax.checkpoint_policies.nothing_saveable


@dataclasses.dataclass(frozen=True)
class RematPlan:
    """Where sleep places `jax.checkpoint` boundaries (one plan per `SleepConfig.remat`)."""
    each_pass: bool      # every pass of the looped segment is rematerialised
    each_window: bool    # every window is rematerialised (its passes nested in a scan over windows)
    sqrt_groups: bool    # the (window, pass) steps run as checkpointed groups of ~sqrt(steps)


REMAT_PLANS = {
    "none": RematPlan(each_pass=False, each_window=False, sqrt_groups=False),
    "pass": RematPlan(each_pass=True, each_window=False, sqrt_groups=False),
    "window": RematPlan(each_pass=False, each_window=True, sqrt_groups=False),
    "sqrt": RematPlan(each_pass=True, each_window=False, sqrt_groups=True),
}
REMATS = tuple(REMAT_PLANS)


@dataclasses.dataclass(frozen=True)
class SleepConfig:
    """The `sleep` block of a config, field for field."""
    passes: int = 1            # N: passes over each consolidation window
    window: int = 24           # L: tokens per window (the attention span)
    eviction: str = "hard"     # "hard" | "sliding"
    remat: str = "none"        # "none" | "pass" | "window" | "sqrt"
    truncate_passes: int = 0   # 0 (or >= N): differentiate every pass; 0 < k < N: only the last k of each
                               # window, the earlier ones entering straight-through (module docstring)
    carry_conv_tail: bool = False  # False: only S crosses a window boundary (Algorithm 1), a window's conv
                                   # starts from zeros; True: the conv tail crosses too (the reference
                                   # models' streaming behaviour)
    halting: str = "fixed"     # adaptive sleep (sleep_jax.halting): "fixed" N passes per window, "converged"
                               # (stop once the fast weights stop changing) or "learned" (the halting head)
    tolerance: float = 1e-3    # "converged": stop after a pass that changes every S by less than this (relative)
    halt_threshold: float = 0.5  # "learned": stop at the first pass whose cumulative stop probability reaches it
    ponder_cost: float = 0.01  # "learned": loss per expected pass per consolidation window

    def __post_init__(self):
        if int(self.passes) < 1:
            raise ValueError(f"sleep.passes >= 1 required, got {self.passes}")
        if int(self.window) < 1:
            raise ValueError(f"sleep.window >= 1 required, got {self.window}")
        windows.check_eviction(self.eviction, "sleep.eviction")
        if self.remat not in REMATS:
            raise ValueError(f"sleep.remat={self.remat!r} must be one of {REMATS}")
        if int(self.truncate_passes) < 0:
            raise ValueError(f"sleep.truncate_passes >= 0 required, got {self.truncate_passes}")
        if not isinstance(self.carry_conv_tail, bool):
            raise ValueError(f"sleep.carry_conv_tail must be True or False, got {self.carry_conv_tail!r}")
        if self.halting not in halting_lib.HALTINGS:
            raise ValueError(f"sleep.halting={self.halting!r} must be one of {halting_lib.HALTINGS}")
        if not float(self.tolerance) >= 0:
            raise ValueError(f"sleep.tolerance >= 0 required (0: never stop early), got {self.tolerance}")
        if not 0 < float(self.halt_threshold) < 1:
            raise ValueError(f"sleep.halt_threshold must lie in (0, 1), got {self.halt_threshold}")
        if not float(self.ponder_cost) >= 0:
            raise ValueError(f"sleep.ponder_cost >= 0 required, got {self.ponder_cost}")
        if self.halting != "fixed" and 0 < self.truncate_passes < self.passes:
            raise ValueError(f"sleep.truncate_passes={self.truncate_passes} needs sleep.halting='fixed' (a window "
                             f"that may stop early has no fixed early passes to run undifferentiated)")

    @property
    def halting_record(self) -> dict:
        """The adaptive rule and the keys it reads, as eval records hold them ({} for "fixed")."""
        if self.halting == "fixed":
            return {}
        keys = ("tolerance",) if self.halting == "converged" else ("halt_threshold", "ponder_cost")
        return {"halting": self.halting, **{key: getattr(self, key) for key in keys}}

    @property
    def remat_plan(self) -> RematPlan:
        return REMAT_PLANS[self.remat]

    @property
    def differentiated_passes(self) -> int:
        """Passes per consolidation window that the gradient goes through (the last ones)."""
        return self.truncate_passes if 0 < self.truncate_passes < self.passes else self.passes


def window_runs(kinds: str) -> list[tuple[str, int, int]]:
    """Maximal runs of one window kind: [(kind, first window, number of windows)]."""
    runs = []
    for index, kind in enumerate(kinds):
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((kind, index, 1))
    return runs


# ---- scans ---------------------------------------------------------------------------------

def _straight_through(before, after):
    """`after` in the forward pass, with the gradient of `before` (d after / d before = I); pytrees.

    Written as stop_gradient(after) + (before - stop_gradient(before)), so the forward value is
    exactly `after`."""
    return jax.tree.map(lambda b, a: jax.lax.stop_gradient(a) + (b - jax.lax.stop_gradient(b)), before, after)


def _tree_where(condition, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def _checkpoint(fn, *, prevent_cse: bool = False):
    """fn rematerialised in the backward pass, keeping only its inputs.

    Inside a scan, prevent_cse=False is enough (and faster): the loop keeps XLA from merging the
    recomputation with the forward pass. Outer loops that may run a single iteration (which XLA
    unrolls) pass prevent_cse=True.
    """
    return jax.checkpoint(fn, policy=REMAT_POLICY, prevent_cse=prevent_cse)


def sqrt_group(total: int) -> int:
    """Steps per checkpointed group of `scan_steps(sqrt_groups=True)`: the divisor of `total`
    nearest sqrt(total), so the groups tile the steps with no remainder scan
    (a separate remainder scan cost up to ~20 carries of memory at small totals). A prime total
    gives groups of one step, i.e. per-pass remat."""
    divisors = [d for d in range(1, total + 1) if total % d == 0]
    return min(divisors, key=lambda d: abs(d - math.sqrt(total)))


def scan_steps(step, carry, indices, *, sqrt_groups: bool = False):
    """Run carry = step(carry, i) for i in indices [S] as one `lax.scan` (never unrolled).

    sqrt_groups: an outer scan over S / g checkpointed groups of g = `sqrt_group(S)` steps, so the
    backward pass keeps O(sqrt(S)) carries (when `step` is itself checkpointed).
    """
    def body(carry, index):
        return step(carry, index), None

    if not sqrt_groups:
        return jax.lax.scan(body, carry, indices)[0]
    total = indices.shape[0]
    group = sqrt_group(total)

    def group_body(carry, group_indices):
        return jax.lax.scan(body, carry, group_indices)[0], None

    groups = indices.reshape(total // group, group)
    return jax.lax.scan(_checkpoint(group_body, prevent_cse=True), carry, groups)[0]


# ---- windows -------------------------------------------------------------------------------

def _span(window_index, sleep: SleepConfig) -> windows.Span:
    """Window `window_index` (a Python or traced int): its positions and what it may see."""
    return windows.window_span(window_index, sleep.window, sleep.eviction)


def _past(past: dict, sleep: SleepConfig) -> dict | None:
    """The retained keys/values a window's blocks are given: the previous window's (sliding), else none."""
    return past if sleep.eviction == "sliding" else None


def initial_past(model, batch: int, sleep: SleepConfig) -> dict:
    """The keys/values a first window may attend to: what survives an eviction of nothing (an
    empty dict for hard eviction; zero-filled slots at negative positions, hence masked, for sliding)."""
    return windows.survivors(model.init_kv(batch, sleep.window), sleep.eviction)


def window_entry(state: dict, sleep: SleepConfig, names=None) -> dict:
    """The recurrent state a window starts from, given what the previous window left (for the
    blocks `names`, default all): the fast weights (`FAST_WEIGHTS`) always cross; the tails (conv
    inputs) cross only with `sleep.carry_conv_tail`, else the window's conv starts from zeros, as in
    the paper's Algorithm 1. Training, eval and the engine all enter windows through this."""
    if sleep.carry_conv_tail:
        return state
    return {name: entry if names is not None and name not in names else
            {key: value if key == FAST_WEIGHTS else jnp.zeros_like(value) for key, value in entry.items()}
            for name, entry in state.items()}


def require_sleep_config(sleep) -> None:
    """The one type check of a `sleep` argument (training path and engine)."""
    if not isinstance(sleep, SleepConfig):
        raise ValueError(f"sleep must be a SleepConfig, got {type(sleep).__name__}")


def run_layers_once(model, hidden, first, layers, state: dict, past: dict, *, sleep: SleepConfig):
    """Blocks `layers` applied once to each of n consecutive windows (a scan over windows).

    Args:
      hidden: [n, B, L, D] inputs of the windows first, first+1, ...; state, past: at entry.
    Returns:
      (outputs [n, B, L, D], state, past updated for those blocks).
    """
    if len(layers) == 0:
        return hidden, state, past
    stateful = model.stateful_layers(layers)

    def one_window(carry, window):
        state, past = carry
        h, index = window
        state = window_entry(state, sleep, stateful)
        h, state, kv = model.apply_blocks(h, _span(index, sleep), state, layers, past=_past(past, sleep))
        return (state, {**past, **windows.survivors(kv, sleep.eviction)}), h

    if sleep.remat_plan.each_window:
        one_window = _checkpoint(one_window)
    indices = first + jnp.arange(hidden.shape[0], dtype=jnp.int32)
    (state, past), hidden = jax.lax.scan(one_window, (state, past), (hidden, indices))
    return hidden, state, past


class SleepCarry(NamedTuple):
    """The carry of the (window, pass) scan of `sleep_segment`.

    hidden: [B, L, D] the hidden states the latest pass wrote (the next pass of the window reads them).
    state: {layer: recurrent state} of the looped segment's stateful blocks; its tails (every entry
      but FAST_WEIGHTS) hold their value at window entry until the window's final pass.
    window_past: {layer: {"k", "v"}} the keys/values the current window attends to (sliding; else {}).
    latest_kv: {layer: {"k", "v"}} the keys/values the latest pass wrote (sliding; else {}).
    outputs: [n, B, L, D] each window's final-pass hidden states, or None when they are not kept.
    halt: the current window's `halting.Halt` (adaptive sleep; None for "fixed").
    passes, expected_passes: int32 / float32 [n, B], each finished window's passes and expected
      passes (adaptive sleep; None for "fixed").
    """
    hidden: jax.Array
    state: dict
    window_past: dict
    latest_kv: dict
    outputs: jax.Array | None
    halt: halting_lib.Halt | None = None
    passes: jax.Array | None = None
    expected_passes: jax.Array | None = None


class SleepRecord(NamedTuple):
    """How long each consolidation window slept: passes int32 [n, B] (N under "fixed") and
    expected_passes float32 [n, B] (sum_n n p_n under "learned", the ponder term; else = passes)."""
    passes: jax.Array
    expected_passes: jax.Array


def _restore_tails(new_state: dict, window_entry_state: dict, keep_new_tails) -> dict:
    """new_state with every entry but FAST_WEIGHTS put back to its window-entry value, unless the
    traced bool `keep_new_tails` holds (the window's final pass)."""
    return {name: {key: value if key == FAST_WEIGHTS
                   else jnp.where(keep_new_tails, value, window_entry_state[name][key])
                   for key, value in layer.items()}
            for name, layer in new_state.items()}


def _put(buffer, index, value, write):
    """buffer [n, ...] with row `index` set to value where the traced bool `write` holds."""
    kept = jax.lax.dynamic_index_in_dim(buffer, index, keepdims=False)
    return jax.lax.dynamic_update_index_in_dim(buffer, jnp.where(write, value, kept), index, 0)


def sleep_segment(model, entry, first, state: dict, past: dict, *, sleep: SleepConfig, keep_outputs: bool,
                  stop_early: bool = False):
    """Up to N passes of the looped segment over each of `count` consecutive consolidation windows.

    Pass p of a window reads the hidden states pass p-1 wrote (pass 0 reads `entry`), carries the
    fast weights across passes and windows, and starts from the tails the window was entered with.
    How many passes a window runs is `sleep.halting`'s (`sleep_jax.halting`): N under "fixed";
    under an adaptive rule a window leaves what its stopping pass wrote.

    The (window, differentiated pass) steps are one flat `lax.scan` over a `SleepCarry`, so with
    remat "pass" each step keeps exactly its carry for the backward pass; "sqrt" splits that scan
    into checkpointed groups of ~sqrt(steps) checkpointed passes (with a coda, each group also
    keeps the [count, B, L, D] buffer of final-pass outputs); "window" nests a scan over passes
    inside a checkpointed scan over windows. With truncation, a window's first step also runs its
    undifferentiated passes (a scan on stop-gradient parameters) and enters their effect
    straight-through (module docstring). Under an adaptive rule the scan still runs N steps per
    window and masks what follows a row's stop; with `stop_early` (eval, the engine: not
    differentiable) each window is a `lax.while_loop` that ends once every row has stopped.

    Args:
      entry: [count, B, L, D] segment inputs (the prelude's outputs) of windows first, first+1, ...
      state, past: at entry. keep_outputs: also return the final pass's hidden states.
    Returns:
      (final-pass outputs [count, B, L, D] or None, state, past updated for the segment's blocks,
      `SleepRecord` [count, B]).
    """
    _, segment, _ = model.config.layer_groups
    plan = sleep.remat_plan
    count, batch = entry.shape[0], entry.shape[1]
    adaptive = sleep.halting != "fixed"
    differentiated = sleep.differentiated_passes
    undifferentiated = sleep.passes - differentiated
    sliding = sleep.eviction == "sliding"
    graphdef, params = nnx.split(model)

    def one_pass(hidden, looped_state, window_past, span):
        return model.apply_blocks(hidden, span, looped_state, segment, past=_past(window_past, sleep))

    segment_past = {name: past[name] for name in model.attention_layers(segment)} if sliding else {}
    segment_state = {name: state[name] for name in model.stateful_layers(segment)}
    if adaptive:
        halting_lib.check(sleep, model.config)
        first_halt = halting_lib.start((entry[0], segment_state, segment_past), sleep)
    if adaptive and stop_early:
        return _sleep_segment_stopping(model, one_pass, entry, first, segment_state, segment_past, first_halt,
                                       state, past, sleep=sleep, keep_outputs=keep_outputs)

    def undifferentiated_passes(hidden, looped_state, window_past, span):
        """The window's first N - k passes, not differentiated, entered straight-through."""
        frozen = nnx.merge(graphdef, jax.lax.stop_gradient(params))
        window_past = jax.lax.stop_gradient(window_past)

        def frozen_pass(carry, _):
            h, s = carry
            h, new_state, _ = frozen.apply_blocks(h, span, s, segment, past=_past(window_past, sleep))
            return (h, _restore_tails(new_state, s, False)), None

        start = jax.lax.stop_gradient((hidden, looped_state))
        end, _ = jax.lax.scan(frozen_pass, start, None, length=undifferentiated)
        return _straight_through((hidden, looped_state), end)

    if plan.each_pass:
        one_pass = _checkpoint(one_pass)

    def step(carry: SleepCarry, index) -> SleepCarry:
        window, pass_index = index // differentiated, index % differentiated
        window_start, final_pass = pass_index == 0, pass_index == differentiated - 1
        hidden = jnp.where(window_start, jax.lax.dynamic_index_in_dim(entry, window, keepdims=False), carry.hidden)
        window_past = _tree_where(window_start, carry.latest_kv, carry.window_past)
        span = _span(first + window, sleep)
        looped_state = _tree_where(window_start, window_entry(carry.state, sleep), carry.state)
        entry_state = looped_state
        if undifferentiated:
            hidden, looped_state = jax.lax.cond(window_start, undifferentiated_passes,
                                                lambda h, s, *_: (h, s), hidden, looped_state, window_past, span)
        hidden, new_state, kv = one_pass(hidden, looped_state, window_past, span)
        kv = windows.survivors(kv, sleep.eviction)
        halt, passes, expected_passes = carry.halt, carry.passes, carry.expected_passes
        if adaptive:   # the window leaves what each row's stopping pass wrote
            halt = halting_lib.after_pass(model, sleep, _tree_where(window_start, first_halt, halt), pass_index,
                                          looped_state, (hidden, new_state, kv))
            left_hidden, left_state, left_kv = halting_lib.outcome(halt, sleep, differentiated=True)
            hidden = jnp.where(final_pass, left_hidden, hidden)
            next_state = _tree_where(final_pass, left_state, _restore_tails(new_state, entry_state, False))
            kv = _tree_where(final_pass, left_kv, kv)
            passes = _put(passes, window, halt.passes, final_pass)
            expected_passes = _put(expected_passes, window, halt.expected_passes, final_pass)
        else:
            next_state = _restore_tails(new_state, entry_state, final_pass)
        outputs = carry.outputs
        if outputs is not None:
            outputs = _put(outputs, window, hidden, final_pass)
        return SleepCarry(hidden=hidden, state=next_state, window_past=window_past, latest_kv=kv, outputs=outputs,
                          halt=halt, passes=passes, expected_passes=expected_passes)

    carry = SleepCarry(hidden=jnp.zeros_like(entry[0]), state=segment_state,
                       window_past=segment_past, latest_kv=segment_past,
                       outputs=jnp.zeros_like(entry) if keep_outputs and not plan.each_window else None)
    if adaptive:
        carry = carry._replace(halt=first_halt, passes=jnp.zeros((count, batch), jnp.int32),
                               expected_passes=jnp.zeros((count, batch), jnp.float32))
    indices = jnp.arange(count * differentiated, dtype=jnp.int32)
    if plan.each_window:
        def one_window(carry, window_indices):
            carry = scan_steps(step, carry, window_indices)
            return carry, (carry.hidden if keep_outputs else None)

        carry, outputs = jax.lax.scan(_checkpoint(one_window, prevent_cse=True), carry,
                                      indices.reshape(count, differentiated))
    else:
        carry = scan_steps(step, carry, indices, sqrt_groups=plan.sqrt_groups)
        outputs = carry.outputs
    if adaptive:
        record = SleepRecord(carry.passes, carry.expected_passes)
    else:
        record = SleepRecord(jnp.full((count, batch), sleep.passes, jnp.int32),
                             jnp.full((count, batch), float(sleep.passes), jnp.float32))
    return outputs, {**state, **carry.state}, {**past, **carry.latest_kv}, record


def _sleep_segment_stopping(model, one_pass, entry, first, segment_state, segment_past, first_halt, state, past,
                            *, sleep: SleepConfig, keep_outputs: bool):
    """`sleep_segment` under an adaptive rule, really stopping: a scan over windows, each a
    `lax.while_loop` over passes that ends when every row has stopped (or after N passes).
    The same `halting.after_pass` decides as in the masked scan, so the same rows stop after
    the same passes with the same results. Not differentiable (a while loop)."""
    def one_window(carry, window_entry_inputs):
        state, window_past = carry
        hidden, window = window_entry_inputs
        span = _span(first + window, sleep)
        entered = window_entry(state, sleep)

        def running(loop):
            pass_index, _, _, halt = loop
            return (pass_index < sleep.passes) & ~jnp.all(halt.stopped)

        def one(loop):
            pass_index, hidden, looped_state, halt = loop
            hidden, new_state, kv = one_pass(hidden, looped_state, window_past, span)
            halt = halting_lib.after_pass(model, sleep, halt, pass_index, looped_state,
                                          (hidden, new_state, windows.survivors(kv, sleep.eviction)))
            return pass_index + 1, hidden, _restore_tails(new_state, entered, False), halt

        loop = (jnp.int32(0), hidden, entered, first_halt)
        halt = jax.lax.while_loop(running, one, loop)[3]
        left_hidden, left_state, left_kv = halt.result
        return (left_state, left_kv), (left_hidden if keep_outputs else None, halt.passes, halt.expected_passes)

    windows_index = jnp.arange(entry.shape[0], dtype=jnp.int32)
    (segment_state, latest_kv), (outputs, passes, expected_passes) = jax.lax.scan(
        one_window, (segment_state, segment_past), (entry, windows_index))
    return outputs, {**state, **segment_state}, {**past, **latest_kv}, SleepRecord(passes, expected_passes)


def consolidate_run(model, tokens, first, state: dict, past: dict, *, sleep: SleepConfig, stop_early: bool = False):
    """Sleep on n consecutive consolidation windows: embed once, prelude once, up to N passes of
    the looped segment (`sleep.halting`), coda once, window after window.

    Args:
      model: HybridModel. tokens: int [n, B, L], windows first, first+1, ... (positions of window
        i start at i * L). state: recurrent state at entry.
      past: keys/values of the window before `first` (sliding eviction; `initial_past` for the
        first window), {} for hard eviction.
      stop_early: under an adaptive rule, windows really stop (eval, engine; not differentiable)
        instead of masking the passes after a stop (training); the results are the same.
    Returns:
      (recurrent state after the last window, keys/values of its final pass for every attention
      block under sliding eviction, else {}, `SleepRecord` [n, B]).
    """
    prelude, _, coda = model.config.layer_groups
    hidden, state, past = run_layers_once(model, model.embed(tokens), first, prelude, state, past, sleep=sleep)
    hidden, state, past, record = sleep_segment(model, hidden, first, state, past, sleep=sleep,
                                                keep_outputs=len(coda) > 0, stop_early=stop_early)
    _, state, past = run_layers_once(model, hidden, first, coda, state, past, sleep=sleep)
    return state, past, record


def consolidate(model, tokens, window_index, state: dict, past: dict, *, sleep: SleepConfig,
                stop_early: bool = False):
    """Sleep on one window: tokens int [B, L] at window `window_index`; see `consolidate_run`.
    Returns (state, past, `SleepRecord` [B])."""
    state, past, record = consolidate_run(model, tokens[None], window_index, state, past, sleep=sleep,
                                          stop_early=stop_early)
    return state, past, SleepRecord(record.passes[0], record.expected_passes[0])


def predict(model, tokens, window_index, state: dict, past: dict, *, sleep: SleepConfig):
    """One ordinary pass over a prediction window.

    Arguments as in `consolidate`. Returns (logits float32 [B, L, vocab], recurrent state after
    the window, keys/values for the next window under sliding eviction, else {}).
    """
    logits, state, kv = model.forward_span(model.embed(tokens), _span(window_index, sleep),
                                           window_entry(state, sleep), past=_past(past, sleep))
    return logits, state, windows.survivors(kv, sleep.eviction)


# ---- the sequence --------------------------------------------------------------------------

def _check_sequence(tokens, loss_mask, sleep, kinds):
    require_sleep_config(sleep)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be int [B, T], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be an integer array, got {tokens.dtype}")
    if loss_mask is not None and loss_mask.shape != tokens.shape:
        raise ValueError(f"loss_mask shape {loss_mask.shape} must equal tokens shape {tokens.shape}")
    steps = tokens.shape[1]
    if steps % sleep.window:
        raise ValueError(f"tokens length T={steps} must be a multiple of sleep.window={sleep.window}")
    if not isinstance(kinds, str) or not 1 <= len(kinds) <= steps // sleep.window:
        raise ValueError(f"kinds={kinds!r}: its length must be at most T / window = {steps} / {sleep.window} "
                         f"= {steps // sleep.window}")
    if any(k not in WINDOW_KINDS for k in kinds):
        raise ValueError(f"kinds={kinds!r} may only hold the letters {WINDOW_KINDS}")


def _walk_windows(model, tokens, loss_mask, score, *, sleep: SleepConfig, kinds: str, stop_early: bool):
    """Read the windows in order; return score(logits, targets, mask) per prediction window, and
    how long each consolidation window slept.

    score maps (logits f32 [B, L, V], targets int32 [B, L], mask f32 [B, L]) to a pytree of [B, L]
    arrays. Returns (that pytree assembled to [B, T] (zeros in consolidation windows, and in the
    windows after the last of `kinds`, which are not read), `SleepRecord` of [B, C] arrays for the
    C consolidation windows in order). stop_early: see `consolidate_run`.
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

    def prediction_window(carry, window):
        state, past = carry
        tok, tgt, msk, index = window
        logits, state, kv = predict(model, tok, index, state, past, sleep=sleep)
        return (state, kv), score(logits, tgt, msk)

    if sleep.remat_plan.each_window:
        prediction_window = _checkpoint(prediction_window)

    carry = (model.init_state(batch), initial_past(model, batch, sleep))
    outputs, records = [], [SleepRecord(jnp.zeros((0, batch), jnp.int32), jnp.zeros((0, batch), jnp.float32))]
    for kind, first, n in window_runs(kinds):
        run = jax.tree.map(lambda x: x[first:first + n], windows)
        if kind == "C":
            *after, record = consolidate_run(model, run[0], first, *carry, sleep=sleep, stop_early=stop_early)
            carry = tuple(after)
            records.append(record)
            outputs.append(jax.tree.map(lambda s: jnp.zeros((n, *s.shape), s.dtype), score_shape))
        else:
            carry, scored = jax.lax.scan(prediction_window, carry, run)
            outputs.append(scored)
    if len(kinds) < count:   # the windows after the last one read
        outputs.append(jax.tree.map(lambda s: jnp.zeros((count - len(kinds), *s.shape), s.dtype), score_shape))
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outputs)           # [W, B, L, ...]
    record = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0).T, *records)            # [B, C]
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(batch, steps, *x.shape[3:]), stacked), record


@jax.custom_vjp
def cross_entropy(logits, targets):
    """Cross-entropy (nats) float32 [...] of logits float32 [..., V] at int targets [...]:
    logsumexp(logits) - logits[target].

    Its gradient, softmax - onehot(target), is recomputed from the logits in the backward pass,
    so it keeps only the logits and the log-partition [...] (autodiff of logsumexp also keeps
    exp(logits - max): a second [..., V] buffer) and writes no scatter of the targets.
    """
    return _cross_entropy_fwd(logits, targets)[0]


def _cross_entropy_fwd(logits, targets):
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit, (logits, log_z, targets)


def _cross_entropy_bwd(residuals, g):
    logits, log_z, targets = residuals
    onehot = targets[..., None] == jnp.arange(logits.shape[-1], dtype=targets.dtype)
    return g[..., None] * (jnp.exp(logits - log_z[..., None]) - onehot), None


cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def _prediction_scores(logits, targets, mask):
    return {"predictions": jnp.argmax(logits, axis=-1).astype(jnp.int32), "nll": cross_entropy(logits, targets)}


def _token_scores(logits, targets, mask):
    scores = _prediction_scores(logits, targets, mask)
    correct = (scores["predictions"] == targets).astype(jnp.float32)
    return {"nll": scores["nll"] * mask, "correct": correct * mask, "mask": mask}


def sleep_metrics(record: SleepRecord, sleep: SleepConfig) -> dict:
    """What training logs of how long windows slept under an adaptive rule ([B, C] record; {}
    under "fixed", where every window runs N, and without consolidation windows): "passes", the
    mean passes per consolidation window, "passes/<n>", the fraction of windows that ran n passes
    (n = 1..N), and "ponder", the mean expected passes (the ponder term under "learned"). (A
    constant metric under "fixed" also made XLA:TPU's memory analysis of the step report no
    temporary bytes: tests/bench/test_memory.py.)"""
    if record.passes.size == 0 or sleep.halting == "fixed":
        return {}
    metrics = {"passes": jnp.mean(record.passes.astype(jnp.float32))}
    for n in range(1, sleep.passes + 1):
        metrics[f"passes/{n}"] = jnp.mean((record.passes == n).astype(jnp.float32))
    metrics["ponder"] = jnp.mean(record.expected_passes)
    return metrics


def sequence_loss(model, tokens, loss_mask, *, sleep: SleepConfig, kinds: str):
    """Mean masked next-token cross-entropy over a sequence read window by window with sleep; under
    `sleep.halting="learned"` plus `sleep.ponder_cost` x the mean expected passes per consolidation
    window (`sleep_jax.halting`).

    Args:
      model: HybridModel. tokens: int [B, T]. loss_mask: [B, T]; 1 = the logits at i (predicting
        token i+1) are scored; the last position is never scored.
      sleep: SleepConfig. kinds: static str, one letter per window ("C" consolidation, "P" prediction)
        from the first (`kinds_from_mask`); windows after the last letter are not read; masks
        outside prediction windows are ignored.
    Returns:
      (loss, metrics) with metrics "loss" (the cross-entropy alone), "token_accuracy" (over scored
      tokens), "sequence_accuracy" (rows with every scored token right, among rows with any),
      "scored" (number of scored tokens), and `sleep_metrics`.
    """
    scores, record = _walk_windows(model, tokens, loss_mask, _token_scores, sleep=sleep, kinds=kinds,
                                   stop_early=False)
    scored = jnp.sum(scores["mask"])
    denominator = jnp.maximum(scored, 1.0)
    cross_entropy = jnp.sum(scores["nll"]) / denominator
    rows_scored = jnp.sum(scores["mask"], axis=1) > 0
    rows_right = jnp.sum(scores["correct"], axis=1) == jnp.sum(scores["mask"], axis=1)
    metrics = {
        "loss": cross_entropy,
        "token_accuracy": jnp.sum(scores["correct"]) / denominator,
        "sequence_accuracy": jnp.sum(rows_scored & rows_right) / jnp.maximum(jnp.sum(rows_scored), 1),
        "scored": scored,
        **sleep_metrics(record, sleep),
    }
    loss = cross_entropy
    if sleep.halting == "learned" and record.passes.size:
        loss = loss + sleep.ponder_cost * metrics["ponder"]
    return loss, metrics


def sequence_scores(model, tokens, loss_mask, *, sleep: SleepConfig, kinds: str) -> dict:
    """What evaluation scores: `{"predictions": int32 [B, T]` greedy next tokens (position i predicts
    token i+1), `"nll": float32 [B, T]` cross-entropy (nats) of token i+1 (0 in consolidation
    windows), `"passes": int32 [B, C]` the passes each of the C consolidation windows ran}. Windows
    under an adaptive rule really stop (`consolidate_run(stop_early=True)`)."""
    scores, record = _walk_windows(model, tokens, loss_mask, _prediction_scores, sleep=sleep, kinds=kinds,
                                   stop_early=True)
    return {**scores, "passes": record.passes}


def sequence_predictions(model, tokens, loss_mask, *, sleep: SleepConfig, kinds: str) -> jax.Array:
    """Greedy next-token predictions int32 [B, T] (position i predicts token i+1); 0 in consolidation windows."""
    return sequence_scores(model, tokens, loss_mask, sleep=sleep, kinds=kinds)["predictions"]


def sequence_logits(model, tokens, *, sleep: SleepConfig, kinds: str) -> jax.Array:
    """Logits float32 [B, T, vocab] of the prediction windows (0 in consolidation windows); adaptive
    windows really stop, as in eval and the engine."""
    return _walk_windows(model, tokens, None, lambda logits, targets, mask: logits, sleep=sleep, kinds=kinds,
                         stop_early=True)[0]
