"""Window geometry and eviction, in one place: where a window's tokens sit, which keys a query may
see, what survives an eviction, and the ring buffer a one-token step writes. Training (`sleep.py`),
the model, the attention mixer and the engine all call these; none restates them.

A sequence is cut into windows of L tokens from its first token: window w holds the absolute
positions [w L, (w + 1) L). Positions keep counting across evictions (RoPE reads them). A batch's
window kinds ("C" consolidate, "P" predict) come from its loss mask (`kinds_from_mask`).

Eviction policies (DESIGN §4):
- "hard": a token attends causally within its own window only; nothing survives an eviction.
- "sliding": a token attends to the most recent L tokens; the next window may attend to the
  evicted window's keys/values of its final pass, which is what survives.

No project imports.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

EVICTIONS = ("hard", "sliding")


def check_eviction(eviction, key: str = "eviction") -> None:
    """The one eviction rule: `eviction` is one of EVICTIONS (the error starts with `key`)."""
    if eviction not in EVICTIONS:
        raise ValueError(f"{key}={eviction!r} must be one of {EVICTIONS}")


def window_positions(index, length: int) -> jax.Array:
    """Absolute positions [L] int32 of window `index` (a Python or traced int) of `length` L."""
    return index * length + jnp.arange(length, dtype=jnp.int32)


def kinds_from_mask(loss_mask, window: int) -> str:
    """Host-side: the window kinds of a batch from its loss_mask [B, T]: "P" for each window where
    any row is scored, else "C", up to the last scored window (the windows after it follow every
    scored position, so they are not read).

    Windows are counted from each sequence's first token, so a row's first scored window is where
    its own answer starts; every window before it must be a consolidation window for that row.
    Rows with nothing scored (eval filler) do not count. ValueError when two rows start scoring in
    different windows (such rows belong in different batches: `Task.batches` groups them)."""
    mask = np.asarray(loss_mask)
    if mask.ndim != 2 or mask.shape[1] % window:
        raise ValueError(f"loss_mask must be [B, T] with T a multiple of window={window}, got {mask.shape}")
    by_window = mask.reshape(mask.shape[0], -1, window).any(axis=2)                      # [B, W]
    rows = np.flatnonzero(by_window.any(axis=1))
    if rows.size == 0:
        raise ValueError("loss_mask scores nothing: no window kinds to read")
    first = by_window[rows].argmax(axis=1)
    if (first != first[0]).any():
        other = int(rows[np.flatnonzero(first != first[0])[0]])
        raise ValueError(f"loss_mask rows {int(rows[0])} and {other} start scoring in windows {int(first[0])} and "
                         f"{int(by_window[other].argmax())}: a batch's rows must share their consolidation windows")
    scored = by_window.any(axis=0)
    return "".join("P" if s else "C" for s in scored[:np.flatnonzero(scored)[-1] + 1])


def attention_mask(q_positions: jax.Array, k_positions: jax.Array, *, window: int | None,
                   eviction: str = "hard", layer_window: int = 0) -> jax.Array:
    """bool [Tq, Tk]: may the query at q_positions[i] attend to the key at k_positions[j].

    Always causal; keys with a negative position are empty slots. `window=None`: full causal.
    `hard`: only keys of the same window (positions // window equal). `sliding`: only the most
    recent `window` tokens (q - k < window). `layer_window` > 0 is a layer's own sliding window
    (q - k < layer_window), applied on top of the sleep window rule.
    """
    q = q_positions[:, None]
    k = k_positions[None, :]
    allowed = (k >= 0) & (k <= q)
    if layer_window:
        allowed = allowed & (q - k < layer_window)
    if window is None:
        return allowed
    check_eviction(eviction)
    if eviction == "hard":
        return allowed & (k // window == q // window)
    return allowed & (q - k < window)


def survivors(kv: dict, eviction: str) -> dict:
    """What of a window's keys/values ({layer: {"k", "v"}}) the next window may attend to after
    the eviction: all of them under sliding eviction, none ({}) under hard."""
    return kv if eviction == "sliding" else {}


# ---- what a span or a token may see -------------------------------------------------------

@functools.partial(jax.tree_util.register_dataclass, data_fields=["positions", "past_positions", "count"],
                   meta_fields=["window", "eviction"])
@dataclasses.dataclass(frozen=True)
class Span:
    """A span of tokens read at once, and what its queries may see (a pytree: the arrays are
    its leaves, window and eviction static).

    positions: [T] int32 absolute positions of the span's tokens.
    window, eviction: the mask rule (`attention_mask`); window=None is full causal attention.
    past_positions: [S] int32 positions of the retained keys/values a block is given beside the
      span's own (`past`; negative = empty slot), or None when there are none.
    count: int32 scalar, the number of real tokens at the start of the span; the rest is padding
      (a span padded to a fixed length), which must not change the recurrent state (a real query
      never sees a padding key: they come after it). None: every token is real.
    """
    positions: jax.Array
    window: int | None = None
    eviction: str = "hard"
    past_positions: jax.Array | None = None
    count: jax.Array | None = None


def window_span(index, length: int, eviction: str) -> Span:
    """The span of window `index`: its positions, and under sliding eviction the positions of the
    window before it (whose final-pass keys/values it may attend to; negative for window 0)."""
    positions = window_positions(index, length)
    past = positions - length if eviction == "sliding" else None
    return Span(positions, window=length, eviction=eviction, past_positions=past)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["position", "cache_positions", "written"],
                   meta_fields=["window", "eviction"])
@dataclasses.dataclass(frozen=True)
class Token:
    """One token per row read against a ring-buffer cache (decoding).

    position: [B] int32 each row's token's absolute position.
    cache_positions: [B, C] int32 the position each cache slot holds (-1 = empty), already
      updated for this token. written: bool [B, C], the slot this token is written to.
    window, eviction: the mask rule, as for a span.
    """
    position: jax.Array
    cache_positions: jax.Array
    written: jax.Array
    window: int | None = None
    eviction: str = "hard"


# ---- the ring buffer ----------------------------------------------------------------------

def ring_slots(position: jax.Array, capacity: int) -> jax.Array:
    """bool [B, C]: row b's token at absolute position position[b] goes to slot position % C."""
    return jnp.arange(capacity) == (position % capacity)[:, None]


def empty_positions(batch: int, capacity: int) -> jax.Array:
    """[B, C] int32 positions of an empty ring buffer (-1 everywhere)."""
    return jnp.full((batch, capacity), -1, jnp.int32)


def ring_token(position: jax.Array, cache_positions: jax.Array, *, window: int | None,
               eviction: str = "hard") -> Token:
    """The `Token` for rows at `position` [B] against a ring buffer whose slots hold
    `cache_positions` [B, C]: the slot each token is written to, and the positions after it."""
    capacity = cache_positions.shape[1]
    if window is not None and capacity < window:
        raise ValueError(f"decode_step: cache capacity {capacity} must be >= window={window}")
    written = ring_slots(position, capacity)
    return Token(position, jnp.where(written, position[:, None], cache_positions), written,
                 window=window, eviction=eviction)


def ring_write(ring: jax.Array, values: jax.Array, position: jax.Array, count: jax.Array) -> jax.Array:
    """ring [B, C, ...] after row b wrote the first count[b] of a span's values [B, T, ...] (T <= C),
    the span starting at absolute position[b]: its token i goes to slot (position[b] + i) % C, as
    `ring_slots` places one token; count[b] <= C, so no token overwrites another of the span."""
    capacity, length = ring.shape[1], values.shape[1]
    index = (jnp.arange(capacity) - position[:, None]) % capacity                 # [B, C]: the span's token per slot
    written = index < count[:, None]
    trailing = lambda x, ndim: x.reshape(*x.shape, *(1,) * (ndim - 2))
    taken = jnp.take_along_axis(values, trailing(jnp.minimum(index, length - 1), values.ndim), axis=1)
    return jnp.where(trailing(written, ring.ndim), taken.astype(ring.dtype), ring)


def evicted_cache(cache: dict, kv: dict, index, length: int, eviction: str) -> dict:
    """A ring buffer {"positions": [B, L], "layers": {layer: {"k", "v"}}} after window `index` has
    slept: empty under hard eviction; under sliding, holding `kv` (the final sleep pass's
    keys/values, [B, L, KVH, Dh]) at the window's positions."""
    if eviction != "sliding":
        return {**cache, "positions": jnp.full_like(cache["positions"], -1)}
    positions = jnp.broadcast_to(window_positions(index, length), cache["positions"].shape)
    layers = jax.tree.map(lambda new, old: new.astype(old.dtype), kv, cache["layers"])
    return {"positions": positions, "layers": layers}
