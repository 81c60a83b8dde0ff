"""The streaming wake/sleep engine: slots (sessions) that read tokens, sleep when their window fills,
and generate, one forward pass per token.

Each slot holds, as one row of the engine's state pytree (leading axis = slot):

- "recurrent": the fast weights now ({"layer{i}": {"S" [HV, K, V] float32, "conv"}}, GDN blocks);
- "entry": the same at the start of the slot's current window (sleep re-reads the window from it);
- "window_tokens": int32 [L], the tokens of the current window so far;
- "cache": the attention ring buffer {"positions": [L] int32 (-1 = empty), "layers": {"k", "v"}};
- "past": the previous window's keys/values from its last sleep pass (sliding eviction only: the
  next sleep attends to them, as in training);
- "logits": float32 [vocab], the prediction of the token after the slot's last one;
- "position": int32, the number of tokens the slot has read.

Semantics (those of `sleep.sequence_logits`): the stream is cut into windows of L tokens. Tokens are
read by wake, one pass each (`HybridModel.decode_step`), so the logits inside a window are those of
a prediction window. When a window is full the slot sleeps at once (`sleep.consolidate`: N passes
over the window from its entry state), then evicts: under hard eviction the cache empties; under
sliding eviction the cache and "past" become the last sleep pass's keys/values. The wake pass's
state of a full window is discarded, exactly as a consolidation window's one-pass state would be.

Scheduling (a sleep queue, not masking): wake steps run all slots together in one batched call; a
slot whose window fills is then put to sleep alone (a batch-1 `consolidate` on its row), and the
others wait only for that sleep. Masking (every slot's row in every sleep call) would make each
sleep cost B rows of N passes and, done inside the step, every step pay for it.

Every jitted function is pure: (params, inputs, slots) -> slots (or (outputs, slots)).
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleep_jax import windows
from sleep_jax.infer import snapshot as snapshot_lib
from sleep_jax.infer.sampling import Sampling, sample_tokens
from sleep_jax.sleep import SleepConfig, consolidate, initial_past, require_sleep_config, window_entry


# ---- pure functions over the slots pytree --------------------------------------------------

def empty_slots(model, sleep: SleepConfig, count: int) -> dict:
    """The state of `count` empty slots (see the module docstring)."""
    return {
        "recurrent": model.init_state(count),
        "entry": model.init_state(count),
        "window_tokens": jnp.zeros((count, sleep.window), jnp.int32),
        "cache": model.init_cache(count, sleep.window),
        "past": initial_past(model, count, sleep),
        "logits": jnp.zeros((count, model.config.vocab_size), jnp.float32),
        "position": jnp.zeros((count,), jnp.int32),
    }


def _select_rows(active, new: dict, old: dict) -> dict:
    """new where active [b] (per row), else old."""
    return jax.tree.map(lambda n, o: jnp.where(active.reshape(-1, *(1,) * (n.ndim - 1)), n, o), new, old)


def wake(model, window: int, eviction: str, tokens, active, rows: dict) -> dict:
    """One wake pass: the rows where active [b] read tokens int32 [b] at their own positions."""
    logits, recurrent, cache = model.decode_step(tokens, rows["position"], rows["recurrent"], rows["cache"],
                                                 window=window, eviction=eviction)
    written = windows.ring_slots(rows["position"], window)
    window_tokens = jnp.where(written, tokens[:, None], rows["window_tokens"])
    new = {**rows, "recurrent": recurrent, "cache": cache, "window_tokens": window_tokens, "logits": logits,
           "position": rows["position"] + 1}
    return _select_rows(active, new, rows)


def sleep_row(model, sleep: SleepConfig, row: dict) -> dict:
    """Sleep on one slot's full window (row: batch 1), then evict."""
    window_index = row["position"][0] // sleep.window - 1
    state, kv = consolidate(model, row["window_tokens"], window_index, row["entry"], row["past"], sleep=sleep)
    state = window_entry(state, sleep)   # what the next window's wake starts from
    cache = windows.evicted_cache(row["cache"], kv, window_index, sleep.window, sleep.eviction)
    return {**row, "recurrent": state, "entry": state, "cache": cache, "past": kv}


def take_row(slots: dict, slot) -> dict:
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, slot, 1, axis=0), slots)


def put_row(slots: dict, slot, row: dict) -> dict:
    return jax.tree.map(lambda x, r: jax.lax.dynamic_update_slice_in_dim(x, r.astype(x.dtype), slot, axis=0),
                        slots, row)


# Jitted entry points (module level, so engines over the same model share their compilations).
# The wake programs take only (window, eviction): they are the same for every N.

@functools.partial(jax.jit, static_argnames=("graphdef", "window", "eviction"), donate_argnames="slots")
def _read_span(params, slot, tokens, count, slots, *, graphdef, window, eviction):
    """Slot `slot` reads tokens[:count] (tokens int32 [L], padded), one wake pass each."""
    model = nnx.merge(graphdef, params)

    def one(row, index):
        return wake(model, window, eviction, tokens[index][None], (index < count)[None], row), None

    row = jax.lax.scan(one, take_row(slots, slot), jnp.arange(tokens.shape[0]))[0]
    return put_row(slots, slot, row)


@functools.partial(jax.jit, static_argnames=("graphdef", "window", "eviction", "temperature", "top_k", "top_p"),
                   donate_argnames="slots")
def _generate_step(params, active, seed, slots, *, graphdef, window, eviction, temperature, top_k, top_p):
    """Every slot where active [B] samples its next token and reads it: (tokens [B], slots)."""
    tokens = sample_tokens(slots["logits"], slots["position"], seed, temperature=temperature, top_k=top_k,
                           top_p=top_p)
    return tokens, wake(nnx.merge(graphdef, params), window, eviction, tokens, active, slots)


@functools.partial(jax.jit, static_argnames=("graphdef", "sleep"), donate_argnames="slots")
def _sleep_slot(params, slot, slots, *, graphdef, sleep):
    """Slot `slot`, whose window is full, sleeps."""
    return put_row(slots, slot, sleep_row(nnx.merge(graphdef, params), sleep, take_row(slots, slot)))


@functools.partial(jax.jit, static_argnames=("graphdef", "sleep"), donate_argnames="slots")
def _fill_and_sleep(params, slot, tokens, slots, *, graphdef, sleep):
    """Slot `slot`, at a window start, takes a whole window tokens int32 [L] and sleeps on it."""
    row = take_row(slots, slot)
    row = {**row, "window_tokens": tokens[None], "position": row["position"] + sleep.window}
    return put_row(slots, slot, sleep_row(nnx.merge(graphdef, params), sleep, row))


@functools.partial(jax.jit, static_argnames=("graphdef", "sleep", "count"))
def _empty_slots(params, *, graphdef, sleep, count):
    return empty_slots(nnx.merge(graphdef, params), sleep, count)


_put_row = jax.jit(put_row, donate_argnums=0)


# ---- the engine ----------------------------------------------------------------------------

class Engine:
    """A fixed number of slots over one model; see the module docstring.

    Args:
      model: a HybridModel. sleep: its SleepConfig (window L, passes N, eviction) as trained.
      slots: the number of sessions. on_sleep: called as on_sleep(slot, window_index, seconds)
        after each sleep (for progress lines).
    """

    def __init__(self, model, sleep: SleepConfig, *, slots: int,
                 on_sleep: Callable[[int, int, float], None] | None = None):
        require_sleep_config(sleep)
        if int(slots) < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.model_config = model.config
        self.sleep = sleep
        self.slots = int(slots)
        self.on_sleep = on_sleep
        self.stats = {"wake_steps": 0, "wake_seconds": 0.0, "sleeps": 0, "sleep_seconds": 0.0}
        self._graphdef, self._params = nnx.split(model)
        self._fingerprint = None
        self._positions = np.zeros(self.slots, np.int64)   # host copy of state["position"]
        self._state = self._empty(self.slots)

    def _empty(self, count: int) -> dict:
        return _empty_slots(self._params, graphdef=self._graphdef, sleep=self.sleep, count=count)

    def _wake_static(self) -> dict:
        return {"graphdef": self._graphdef, "window": self.sleep.window, "eviction": self.sleep.eviction}

    # ---- checks ----------------------------------------------------------------------------

    def _check_slot(self, slot) -> int:
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.slots:
            raise ValueError(f"slot={slot!r} is out of range: this engine has slots 0..{self.slots - 1}")
        return int(slot)

    def _check_tokens(self, tokens) -> np.ndarray:
        array = np.asarray(tokens)
        if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"tokens must be a non-empty 1-D sequence of integers, got shape {array.shape} "
                             f"dtype {array.dtype}")
        bad = np.flatnonzero((array < 0) | (array >= self.model_config.vocab_size))
        if bad.size:
            raise ValueError(f"tokens[{bad[0]}]={array[bad[0]]} is outside the vocabulary "
                             f"[0, {self.model_config.vocab_size})")
        return array.astype(np.int32)

    # ---- reading and generating ------------------------------------------------------------

    def position(self, slot: int) -> int:
        """The number of tokens slot `slot` has read."""
        return int(self._positions[self._check_slot(slot)])

    def logits(self, slot: int) -> np.ndarray:
        """float32 [vocab]: slot `slot`'s prediction of the token after the last one it read."""
        return np.asarray(self._state["logits"][self._check_slot(slot)])

    def reset(self, slot: int) -> None:
        """Empty slot `slot` (a new session)."""
        slot = self._check_slot(slot)
        self._state = _put_row(self._state, slot, self._empty(1))
        self._positions[slot] = 0

    def _timed(self, fn, *args, **static):
        start = time.perf_counter()
        self._state = jax.block_until_ready(fn(*args, **static))
        return time.perf_counter() - start

    def _sleep_if_full(self, slot: int) -> None:
        if self._positions[slot] % self.sleep.window == 0:
            seconds = self._timed(_sleep_slot, self._params, slot, self._state, graphdef=self._graphdef,
                                  sleep=self.sleep)
            self._record_sleep(slot, seconds)

    def _record_sleep(self, slot: int, seconds: float) -> None:
        self.stats["sleeps"] += 1
        self.stats["sleep_seconds"] += seconds
        if self.on_sleep is not None:
            self.on_sleep(slot, int(self._positions[slot]) // self.sleep.window - 1, seconds)

    def prefill(self, slot: int, tokens: Sequence[int]) -> np.ndarray:
        """Read `tokens` (any number) into slot `slot`, sleeping each time its window fills.

        Returns float32 [vocab]: the logits predicting the token after the last one read.
        A whole window that is followed by more of `tokens` goes straight to sleep (its wake pass
        would be discarded by the sleep anyway).
        """
        slot, tokens = self._check_slot(slot), self._check_tokens(tokens)
        length, read = self.sleep.window, 0
        while read < tokens.size:
            offset = int(self._positions[slot]) % length
            count = min(length - offset, tokens.size - read)
            piece = tokens[read:read + count]
            read += count
            if offset == 0 and count == length and read < tokens.size:
                seconds = self._timed(_fill_and_sleep, self._params, slot, piece, self._state,
                                      graphdef=self._graphdef, sleep=self.sleep)
                self._positions[slot] += length
                self._record_sleep(slot, seconds)
                continue
            padded = np.zeros(length, np.int32)
            padded[:count] = piece
            self.stats["wake_seconds"] += self._timed(_read_span, self._params, slot, padded, np.int32(count),
                                                      self._state, **self._wake_static())
            self.stats["wake_steps"] += count
            self._positions[slot] += count
            self._sleep_if_full(slot)
        return self.logits(slot)

    def generate(self, slots: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling()) -> np.ndarray:
        """Generate `max_new_tokens` tokens in each of `slots` (prefilled), one batched pass per token.

        Returns int32 [len(slots), max_new_tokens]. A window that fills during generation sleeps.
        """
        slots = [slots] if isinstance(slots, (int, np.integer)) else list(slots)
        slots = [self._check_slot(s) for s in slots]
        if len(set(slots)) != len(slots):
            raise ValueError(f"slots={slots} lists a slot twice")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not isinstance(sampling, Sampling):
            raise ValueError(f"sampling must be a Sampling, got {type(sampling).__name__}")
        empty = [s for s in slots if self._positions[s] == 0]
        if empty:
            raise ValueError(f"slot {empty[0]} is empty: prefill it before generate")
        active = np.zeros(self.slots, bool)
        active[slots] = True
        static = dict(self._wake_static(), temperature=float(sampling.temperature), top_k=int(sampling.top_k),
                      top_p=float(sampling.top_p))
        out = []
        for _ in range(int(max_new_tokens)):
            start = time.perf_counter()
            tokens, self._state = _generate_step(self._params, active, np.uint32(sampling.seed), self._state,
                                                 **static)
            out.append(np.asarray(tokens)[slots])
            self.stats["wake_seconds"] += time.perf_counter() - start
            self.stats["wake_steps"] += 1
            self._positions[active] += 1
            for slot in slots:
                self._sleep_if_full(slot)
        return np.stack(out, axis=1)

    # ---- snapshots -------------------------------------------------------------------------

    def _snapshot_metadata(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = snapshot_lib.fingerprint(self._params)
        return snapshot_lib.metadata(self.model_config, self.sleep, self._fingerprint)

    def snapshot(self, slot: int, path: str) -> None:
        """Write slot `slot`'s session (state, cache, position) to the safetensors file `path`
        (atomically: a temporary file renamed into place)."""
        slot = self._check_slot(slot)
        arrays = {name: np.asarray(leaf[slot]) for name, leaf in snapshot_lib.named_leaves(self._state).items()}
        snapshot_lib.write(path, arrays, self._snapshot_metadata())

    def restore(self, slot: int, path: str) -> None:
        """Load a session written by `snapshot` into slot `slot`, bit-exactly. The file must come
        from the same model (config and parameters) and sleep config; nothing changes otherwise."""
        slot = self._check_slot(slot)
        ours = snapshot_lib.named_leaves(self._state)
        arrays = snapshot_lib.read(path, self._snapshot_metadata(),
                                   {name: (leaf.shape[1:], leaf.dtype) for name, leaf in ours.items()})
        row = jax.tree.unflatten(jax.tree.structure(self._state), [arrays[name][None] for name in ours])
        self._state = _put_row(self._state, slot, row)
        self._positions[slot] = int(arrays["position"])
