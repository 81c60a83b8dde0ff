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
read by wake, one pass each, so the logits inside a window are those of a prediction window. When a
window is full the slot sleeps at once (`sleep.consolidate`: N passes over the window from its entry
state), then evicts: under hard eviction the cache empties; under sliding eviction the cache and
"past" become the last sleep pass's keys/values. The wake pass's state of a full window is
discarded, exactly as a consolidation window's one-pass state would be.

Prefill (`prefill_many`, `prefill` for one slot) reads in rounds: in each, every slot with tokens
left takes what is left of its window (a piece). A piece is read by one parallel span forward
(`read_span`: the blocks' span form, as training reads a prediction window) from the slot's state
now, attending to its ring buffer (the window's earlier tokens, and under sliding eviction the
previous window's keys/values not yet overwritten), so it continues a window partly read before by
spans or decode steps (a slot whose ring holds no visible key, e.g. a fresh one, skips it); it
writes the fast weights, conv tails, ring buffer and window tokens and gives the last token's
logits. Pieces are padded to a power of two (`span_length`, at least MIN_SPAN, at most L: a few
compiled programs); the padding comes after the real tokens (no real query sees it),
`windows.Span.count` keeps it out of the recurrent state, and only real tokens enter the ring
buffer. All the round's pieces are read in one call (a vmap over their rows, each
at its own positions). A whole window followed by more tokens goes straight to sleep unread (its
wake pass would be discarded). Generation reads one token per step in every slot
(`HybridModel.decode_step`).

Sleep scheduling (a sleep queue, not masking): after a generation step or a prefill round, the
slots whose windows are full sleep together in one call (`sleep_row` on each of their rows, a vmap:
each row has its own window index, hence its own RoPE positions and masks); the other slots wait
only for that call. Masking (every slot's row in every sleep call) would make each sleep cost B
rows of N passes and, done inside the step, every step pay for it.

Every jitted function is pure: (params, inputs, slots) -> slots (or (outputs, slots)).
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleep_jax import halting, windows
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


def read_span(model, window: int, eviction: str, tokens, count, row: dict, *, attend_ring: bool = True) -> dict:
    """One slot (row: batch 1) reads its next tokens in one parallel pass over a span.

    tokens: int32 [1, P], of which the first `count` (int32 scalar, 1 <= count <= P) are real and
    the rest padding; the real ones must not cross the slot's window end. The span starts from the
    slot's state now and attends to its ring buffer (the window's tokens so far and, under sliding
    eviction, the previous window's keys/values not yet overwritten), so it continues whatever
    read the window before it; attend_ring=False (static) skips the ring when none of its keys is
    visible (`ring_visible`). `windows.Span.count` keeps the padding out of the recurrent state;
    only the real tokens' keys/values and tokens enter the ring buffers, and the logits are those
    of the last real token (the head runs on that position only).
    """
    position, cache = row["position"], row["cache"]
    steps = tokens.shape[1]
    span_positions = position[0] + jnp.arange(steps, dtype=jnp.int32)
    span = windows.Span(span_positions, window=window, eviction=eviction, count=count,
                        past_positions=cache["positions"][0] if attend_ring else None)
    exits = []
    hidden, state, kv = model.apply_blocks(model.embed(tokens), span, row["recurrent"], range(len(model.blocks)),
                                           past=cache["layers"] if attend_ring else None, exits=exits)
    last = lambda h: jax.lax.dynamic_index_in_dim(h, count - 1, axis=1, keepdims=False)
    logits = model.logits(last(hidden), [last(e) for e in exits])
    write = lambda ring, values: windows.ring_write(ring, values, position, count[None])
    cache = {"positions": write(cache["positions"], span_positions[None]),
             "layers": jax.tree.map(write, cache["layers"], kv)}
    return {**row, "recurrent": state, "cache": cache, "window_tokens": write(row["window_tokens"], tokens),
            "logits": logits, "position": position + count}


def sleep_row(model, sleep: SleepConfig, row: dict) -> tuple[dict, jax.Array]:
    """Sleep on one slot's full window (row: batch 1), then evict; (row, passes int32 [1]: the
    passes the window ran, N under "fixed"). The one call of `consolidate` (adaptive windows
    really stop)."""
    window_index = row["position"][0] // sleep.window - 1
    state, kv, record = consolidate(model, row["window_tokens"], window_index, row["entry"], row["past"],
                                    sleep=sleep, stop_early=True)
    state = window_entry(state, sleep)   # what the next window's wake starts from
    cache = windows.evicted_cache(row["cache"], kv, window_index, sleep.window, sleep.eviction)
    return {**row, "recurrent": state, "entry": state, "cache": cache, "past": kv}, record.passes


def take_rows(slots: dict, indices) -> dict:
    """The rows indices int32 [k] of the slots pytree (leading axis k)."""
    return jax.tree.map(lambda x: x[indices], slots)


def put_rows(slots: dict, indices, rows: dict) -> dict:
    """The slots pytree with rows [k, ...] written at indices int32 [k] (distinct)."""
    return jax.tree.map(lambda x, r: x.at[indices].set(r.astype(x.dtype)), slots, rows)


def each_row(fn, rows: dict, *args) -> dict:
    """fn(row, *row_args) on every row of `rows` [k, ...] as a batch-1 row, in one vectorised call
    (`jax.vmap`): each row keeps its own positions (RoPE, masks, window index). args: arrays [k, ...]."""
    def one(row, *row_args):
        return fn(jax.tree.map(lambda x: x[None], row), *row_args)
    return jax.tree.map(lambda x: x[:, 0], jax.vmap(one)(rows, *args))


class ModelDef:
    """The static half of a split model, for the jitted entry points: its nnx graphdef and the
    tree structure of its parameters, which travel as a flat list of arrays (`split`).

    jit hashes its static arguments on every call, and hashing a graphdef walks the whole module
    graph in Python (~1.5 ms for an 8-layer model, a tenth of a decode step on one CPU core); so
    is flattening an `nnx.State` (~1 ms more). The hash is computed once here, and equality is
    identity first, so each engine step pays neither. It holds no array: jit's cache keeps its
    static arguments alive.
    """

    def __init__(self, graphdef, treedef):
        self.graphdef, self.treedef = graphdef, treedef
        self._hash = hash((graphdef, treedef))

    @classmethod
    def split(cls, model) -> tuple["ModelDef", list]:
        """(the ModelDef of `model`, its parameters as a flat list of arrays)."""
        graphdef, params = nnx.split(model)
        leaves, treedef = jax.tree.flatten(params)
        return cls(graphdef, treedef), leaves

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (isinstance(other, ModelDef) and self._hash == other._hash
                                 and (self.graphdef, self.treedef) == (other.graphdef, other.treedef))

    def params(self, leaves: list) -> nnx.State:
        """The parameters `leaves` as the model's `nnx.State`."""
        return jax.tree.unflatten(self.treedef, leaves)

    def merge(self, leaves: list):
        """The model with parameters `leaves` (inside a jitted function: traced arrays)."""
        return nnx.merge(self.graphdef, self.params(leaves))


# Jitted entry points (module level, so engines over the same model share their compilations).
# `model` is a ModelDef (static), `params` its leaves. The wake programs take only (window,
# eviction): they are the same for every N. Each compiles once per number of rows k (and span
# length P), not per slot.

@functools.partial(jax.jit, static_argnames=("model", "window", "eviction", "attend_ring"),
                   donate_argnames="slots")
def _read_spans(params, indices, tokens, counts, slots, *, model, window, eviction, attend_ring):
    """Slots indices int32 [k] read tokens int32 [k, P] (row i: its first counts[i], the rest
    padding), each in one parallel span (`read_span`), all rows in one call."""
    model = model.merge(params)
    read = lambda row, row_tokens, count: read_span(model, window, eviction, row_tokens[None], count, row,
                                                    attend_ring=attend_ring)
    return put_rows(slots, indices, each_row(read, take_rows(slots, indices), tokens, counts))


@functools.partial(jax.jit, static_argnames=("model", "window", "eviction", "temperature", "top_k", "top_p"),
                   donate_argnames="slots")
def _generate_step(params, active, seed, slots, *, model, window, eviction, temperature, top_k, top_p):
    """Every slot where active [B] samples its next token and reads it: (tokens [B], slots)."""
    tokens = sample_tokens(slots["logits"], slots["position"], seed, temperature=temperature, top_k=top_k,
                           top_p=top_p)
    return tokens, wake(model.merge(params), window, eviction, tokens, active, slots)


@functools.partial(jax.jit, static_argnames=("model", "sleep"), donate_argnames="slots")
def _sleep_slots(params, indices, whole, given, slots, *, model, sleep):
    """Slots indices int32 [k], whose windows are full, sleep in one call (`sleep_row` on every
    row, each at its own window): (passes int32 [k] each window ran, slots). Row i where given[i]
    first takes the whole window whole[i] (int32 [L]) unread: a window followed by more tokens
    goes straight to sleep. Under an adaptive rule the call lasts as long as its longest sleep."""
    model = model.merge(params)

    def one(row, window_tokens, take):
        row = {**row, "window_tokens": jnp.where(take, window_tokens[None], row["window_tokens"]),
               "position": row["position"] + jnp.where(take, sleep.window, 0)}
        return sleep_row(model, sleep, row)

    rows, passes = each_row(one, take_rows(slots, indices), whole, given)
    return passes, put_rows(slots, indices, rows)


@functools.partial(jax.jit, static_argnames=("model", "sleep", "count"))
def _empty_slots(params, *, model, sleep, count):
    return empty_slots(model.merge(params), sleep, count)


_put_rows = jax.jit(put_rows, donate_argnums=0)


def ring_visible(position: int, window: int, eviction: str) -> bool:
    """Host-side: may a slot that has read `position` tokens see any key of its ring buffer? Its
    window's earlier tokens (position % L > 0), or under sliding eviction the previous window's."""
    return position % window > 0 or (eviction == "sliding" and position >= window)


# The shortest padded span: below it a span's time hardly depends on its length (reading the
# weights dominates), so shorter pieces share its program.
MIN_SPAN = 16


def span_length(count: int, window: int) -> int:
    """The padded length P of a span of `count` real tokens: the next power of two, at least
    MIN_SPAN, at most the window (a bounded number of compiled span programs: log2(L / 16) + 1)."""
    return min(max(1 << (int(count) - 1).bit_length(), MIN_SPAN), int(window))


# ---- the engine ----------------------------------------------------------------------------

class Engine:
    """A fixed number of slots over one model; see the module docstring.

    Args:
      model: a HybridModel. sleep: its SleepConfig (window L, passes N, eviction) as trained.
      slots: the number of sessions. on_sleep: called as on_sleep(slot, window_index, seconds)
        for each window slept (for progress lines); seconds is the wall time of the sleep call,
        shared by the slots that slept together in it.
    """

    def __init__(self, model, sleep: SleepConfig, *, slots: int,
                 on_sleep: Callable[[int, int, float], None] | None = None):
        require_sleep_config(sleep)
        halting.check(sleep, model.config)
        if int(slots) < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.model_config = model.config
        self.sleep = sleep
        self.slots = int(slots)
        self.on_sleep = on_sleep
        # wake_tokens: tokens read awake (all slots); sleeps: windows slept; sleep_calls: batched sleep
        # calls; sleep_passes: passes run over all windows slept; passes_histogram: {n: windows that ran n}
        self.stats = {"wake_tokens": 0, "wake_seconds": 0.0, "sleeps": 0, "sleep_calls": 0, "sleep_seconds": 0.0,
                      "sleep_passes": 0, "passes_histogram": {}}
        self._model, self._params = ModelDef.split(model)
        self._fingerprint = None
        self._positions = np.zeros(self.slots, np.int64)   # host copy of state["position"]
        self._state = self._empty(self.slots)

    def _empty(self, count: int) -> dict:
        return _empty_slots(self._params, model=self._model, sleep=self.sleep, count=count)

    def _wake_static(self) -> dict:
        return {"model": self._model, "window": self.sleep.window, "eviction": self.sleep.eviction}

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
        self._state = _put_rows(self._state, np.array([slot], np.int32), self._empty(1))
        self._positions[slot] = 0

    def _timed(self, fn, *args, **static):
        start = time.perf_counter()
        self._state = jax.block_until_ready(fn(*args, **static))
        return time.perf_counter() - start

    def _read(self, pieces: dict[int, np.ndarray]) -> None:
        """Slots pieces' keys read their pieces (each within its window), one span per slot, in one call."""
        slots = list(pieces)
        counts = np.array([pieces[s].size for s in slots], np.int32)
        tokens = np.zeros((len(slots), span_length(counts.max(), self.sleep.window)), np.int32)
        for row, slot in enumerate(slots):
            tokens[row, :counts[row]] = pieces[slot]
        attend_ring = any(ring_visible(int(self._positions[s]), self.sleep.window, self.sleep.eviction)
                          for s in slots)
        self.stats["wake_seconds"] += self._timed(_read_spans, self._params, np.array(slots, np.int32), tokens,
                                                  counts, self._state, attend_ring=attend_ring, **self._wake_static())
        self.stats["wake_tokens"] += int(counts.sum())
        self._positions[slots] += counts

    def _sleep_full(self, full: list[int], whole: dict[int, np.ndarray] | None = None) -> None:
        """The slots `full` (windows full) and the slots of `whole` (each given a whole window
        unread) sleep together in one call."""
        whole = whole or {}
        slots = list(full) + list(whole)
        if not slots:
            return
        windows_given = np.zeros((len(slots), self.sleep.window), np.int32)
        for row, slot in enumerate(slots[len(full):], start=len(full)):
            windows_given[row] = whole[slot]
        given = np.arange(len(slots)) >= len(full)
        start = time.perf_counter()
        passes, self._state = _sleep_slots(self._params, np.array(slots, np.int32), windows_given, given,
                                           self._state, model=self._model, sleep=self.sleep)
        passes = np.asarray(passes)   # waits for the call
        seconds = time.perf_counter() - start
        self._positions[list(whole)] += self.sleep.window
        self.stats["sleeps"] += len(slots)
        self.stats["sleep_calls"] += 1
        self.stats["sleep_seconds"] += seconds
        self.stats["sleep_passes"] += int(passes.sum())
        for n in passes.tolist():
            self.stats["passes_histogram"][n] = self.stats["passes_histogram"].get(n, 0) + 1
        if self.on_sleep is not None:
            for slot in slots:
                self.on_sleep(slot, int(self._positions[slot]) // self.sleep.window - 1, seconds)

    def prefill(self, slot: int, tokens: Sequence[int]) -> np.ndarray:
        """`prefill_many({slot: tokens})`: float32 [vocab], the logits after the last token read."""
        return self.prefill_many({slot: tokens})[self._check_slot(slot)]

    def prefill_many(self, prompts: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """Each slot of `prompts` reads its tokens (any number), sleeping each time its window fills.

        Reading goes in rounds: in each, every slot with tokens left takes what is left of its
        window (a piece). The pieces are read together, one parallel span per slot (`read_span`),
        except a whole window followed by more tokens, which goes straight to sleep unread (its
        wake pass would be discarded by the sleep anyway); then every slot whose window is full
        sleeps, all in one call. Returns {slot: float32 [vocab]}, the logits predicting the token
        after each slot's last one. Bad input raises ValueError before any slot changes.
        """
        if not isinstance(prompts, Mapping) or not prompts:
            raise ValueError(f"prompts must be a non-empty mapping slot -> tokens, got {prompts!r}")
        prompts = {self._check_slot(slot): self._check_tokens(tokens) for slot, tokens in prompts.items()}
        length, read = self.sleep.window, dict.fromkeys(prompts, 0)
        while any(read[slot] < tokens.size for slot, tokens in prompts.items()):
            pieces, whole = {}, {}
            for slot, tokens in prompts.items():
                if read[slot] == tokens.size:
                    continue
                offset = int(self._positions[slot]) % length
                piece = tokens[read[slot]:read[slot] + length - offset]
                read[slot] += piece.size
                if piece.size == length and read[slot] < tokens.size:
                    whole[slot] = piece
                else:
                    pieces[slot] = piece
            if pieces:
                self._read(pieces)
            self._sleep_full([slot for slot in pieces if self._positions[slot] % length == 0], whole)
        return {slot: self.logits(slot) for slot in prompts}

    def generate(self, slots: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling()) -> np.ndarray:
        """Generate `max_new_tokens` tokens in each of `slots` (prefilled), one batched pass per token.

        Returns int32 [len(slots), max_new_tokens]. The windows that fill at a step sleep together
        in one call.
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
            self.stats["wake_tokens"] += len(slots)
            self._positions[active] += 1
            self._sleep_full([slot for slot in slots if self._positions[slot] % self.sleep.window == 0])
        return np.stack(out, axis=1)

    # ---- snapshots -------------------------------------------------------------------------

    def _snapshot_metadata(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = snapshot_lib.fingerprint(self._model.params(self._params))
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
        self._state = _put_rows(self._state, np.array([slot], np.int32), row)
        self._positions[slot] = int(arrays["position"])
