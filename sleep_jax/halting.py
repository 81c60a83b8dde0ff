"""Adaptive sleep: how many of its (at most `sleep.passes`) passes each consolidation window runs.

`sleep.halting` picks the rule, decided per window and per batch row after every pass:

- "fixed": every window runs N = `sleep.passes` passes (the paper's setting);
- "converged" (training-free): a window stops after the first pass in which the relative change
  ||S_new - S_old||_F / ||S_old||_F of every stateful block's fast weights is below
  `sleep.tolerance` (tolerance 0 never stops early);
- "learned": the model's halting head (`layers.halting`) gives a stopping probability lambda_n
  after pass n (lambda_N = 1), hence the halting distribution p_n = lambda_n prod_{j<n} (1 -
  lambda_j); a window stops at the first pass whose cumulative probability sum_{j<=n} p_j reaches
  `sleep.halt_threshold`.

Whatever the rule, a window that stops after k passes leaves exactly what N = k fixed passes would
leave (its hidden states, fast weights with that pass's conv tails, and keys/values). Training
keeps the scan over N passes static and masks what comes after the stop; eval and the engine
really stop (`sleep.sleep_segment(stop_early=True)`: a `lax.while_loop` over passes, until every
row of the batch has stopped).

Training "learned" (PonderNet / ACT): the loss is the expected loss over the halting distribution,
taken to first order around the state the window stops with, plus `sleep.ponder_cost` x the
expected number of passes sum_n n p_n. The window's outputs x (hidden, state, keys/values) are
`x_stop` in the forward pass and carry the gradient of the expectation sum_n p_n x_n (a
straight-through estimate): L(x_stop) + dL/dx . (sum_n p_n x_n - x_stop) is the first-order
expansion of sum_n p_n L(x_n), and its gradient reaches the halting head through every p_n.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sleep_jax.layers.mixer import FAST_WEIGHTS

HALTINGS = ("fixed", "converged", "learned")


class Halt(NamedTuple):
    """Where each row of one window stands, after the passes so far (leading axis = batch row B).

    stopped: bool [B], the row has stopped (its `result` is final).
    passes: int32 [B], the passes the row has run (counting the one it stopped after).
    remaining: float32 [B], prod_j (1 - lambda_j): the probability of not having stopped ("learned").
    expected_passes: float32 [B], sum_n n p_n so far ("learned"; else `passes`).
    result: (hidden, state, kv) as the row's stopping pass wrote them (before it stops: the latest).
    expected: the same pytree, sum_n p_n x_n ("learned"; else None).
    """
    stopped: jax.Array
    passes: jax.Array
    remaining: jax.Array
    expected_passes: jax.Array
    result: tuple
    expected: tuple | None


def _rows(mask, x):
    """mask [B] broadcast against x [B, ...]."""
    return mask.reshape(-1, *(1,) * (x.ndim - 1))


def start(result_like: tuple, sleep) -> Halt:
    """The `Halt` of a window before its first pass; result_like: a (hidden, state, kv) of the
    window's shapes (its values are never read: the first pass overwrites them)."""
    batch = result_like[0].shape[0]
    zeros = jax.tree.map(jnp.zeros_like, result_like)
    return Halt(stopped=jnp.zeros((batch,), bool), passes=jnp.zeros((batch,), jnp.int32),
                remaining=jnp.ones((batch,), jnp.float32), expected_passes=jnp.zeros((batch,), jnp.float32),
                result=zeros, expected=zeros if sleep.halting == "learned" else None)


def relative_changes(before: dict, after: dict) -> jax.Array:
    """float32 [B, n]: ||S_after - S_before||_F / ||S_before||_F of each stateful block's fast
    weights (n blocks, in the order of `after`); 0 where both are zero, inf where only S_after is
    non-zero (the first pass from S = 0)."""
    changes = []
    for name in after:
        old = before[name][FAST_WEIGHTS].astype(jnp.float32)
        new = after[name][FAST_WEIGHTS].astype(jnp.float32)
        axes = tuple(range(1, new.ndim))
        difference = jnp.sqrt(jnp.sum(jnp.square(new - old), axis=axes))
        size = jnp.sqrt(jnp.sum(jnp.square(old), axis=axes))
        changes.append(jnp.where(size > 0, difference / jnp.where(size > 0, size, 1.0),
                                 jnp.where(difference > 0, jnp.inf, 0.0)))
    return jnp.stack(changes, axis=-1)


def after_pass(model, sleep, halt: Halt, pass_index, before: dict, written: tuple) -> Halt:
    """`halt` after pass `pass_index` (0-based, traced) of the window (rules "converged" and
    "learned": "fixed" needs no record, every window runs N passes).

    Args:
      before: the looped segment's recurrent state the pass started from.
      written: (hidden [B, L, D], state, kv) the pass wrote (state with this pass's conv tails).
    """
    last = pass_index == sleep.passes - 1
    remaining, expected_passes, expected = halt.remaining, halt.expected_passes, halt.expected
    changes = relative_changes(before, written[1])
    if sleep.halting == "converged":
        stop = jnp.all(changes < sleep.tolerance, axis=-1)
    else:
        stop_probability = jnp.where(last, 1.0, model.halting_head(written[0], changes))
        weight = remaining * stop_probability                      # p_n
        remaining = remaining * (1.0 - stop_probability)
        stop = 1.0 - remaining >= sleep.halt_threshold
        expected_passes = expected_passes + weight * (pass_index + 1).astype(jnp.float32)
        expected = jax.tree.map(lambda e, x: e + _rows(weight, x).astype(x.dtype) * x, expected, written)
    running = ~halt.stopped
    result = jax.tree.map(lambda x, r: jnp.where(_rows(running, x), x, r), written, halt.result)
    passes = halt.passes + running.astype(jnp.int32)
    if sleep.halting != "learned":
        expected_passes = passes.astype(jnp.float32)
    return Halt(stopped=halt.stopped | stop | last, passes=passes, remaining=remaining,
                expected_passes=expected_passes, result=result, expected=expected)


def outcome(halt: Halt, sleep, *, differentiated: bool) -> tuple:
    """What the window leaves, (hidden, state, kv): each row's stopping pass's; when training a
    "learned" rule, with the gradient of the expectation over the halting distribution (module
    docstring)."""
    if sleep.halting != "learned" or not differentiated:
        return halt.result
    return jax.tree.map(lambda stop, mean: jax.lax.stop_gradient(stop) + (mean - jax.lax.stop_gradient(mean)),
                        halt.result, halt.expected)


def check(sleep, model_config) -> None:
    """The one check of `sleep.halting` against the model: "converged" and "learned" read the
    fast weights of the looped segment, and "learned" needs the model's halting head."""
    if sleep.halting == "fixed":
        return
    if not model_config.looped_stateful:
        raise ValueError(f"sleep.halting={sleep.halting!r} reads the fast weights of the looped segment, but "
                         f"model.pattern={model_config.pattern!r} (model.loop={model_config.loop}) has no "
                         f"stateful block there")
    if sleep.halting == "learned" and not model_config.halting_head:
        raise ValueError("sleep.halting='learned' needs model.halting_head=True (the head's parameters)")
