"""What the fast-weight ops (the gated delta rule, the gated Hebbian rule) share around their own
math: the argument rules, the public entry frame (`apply_rule`), the one-token frame over grouped
value heads (`grouped_step`) and the scan over tokens (`scan_over_time`).

Each rule is written once here; every op entry point calls it with its own name, and
`ModelConfig` calls `check_options` with its keys, so a bad `model.delta_rule_impl` and a bad
`impl=` argument are refused by the same code.
"""
from typing import Callable

import jax
import jax.numpy as jnp

IMPLS = ("auto", "recurrent", "chunked", "pallas")
CHUNK_SIZES = (16, 32, 64)


def check_options(impl, chunk_size, *, impls=IMPLS, impl_key="`impl`", chunk_key="`chunk_size`",
                  where: str | None = "gated_delta_rule") -> None:
    """`impl` one of `impls`, `chunk_size` one of CHUNK_SIZES. The error names `impl_key` /
    `chunk_key`: an op's argument (after the op's name `where`), or, with `where=None`, a config
    key such as model.delta_rule_impl, which then starts the line."""
    if impl not in impls:
        raise ValueError(f"{where}: unknown {impl_key}={impl!r}; expected one of {impls}" if where else
                         f"{impl_key}={impl!r}: unknown; expected one of {impls}")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"{where + ': ' if where else ''}{chunk_key}={chunk_size} must be one of {CHUNK_SIZES}")


def check_grouping(where: str, value_heads: int, heads: int) -> None:
    """Grouped value heads: HV a multiple of H (value head h reads key head h // (HV // H))."""
    if value_heads % heads:
        raise ValueError(f"{where}: value heads of `v` ({value_heads}) must be a multiple of the key heads of "
                         f"`q`/`k` ({heads})")


def check_sequence(where: str, q, k, v, g, beta, initial_state) -> None:
    """Shapes and dtypes of a fast-weight op over a sequence: q, k [B, T, H, K]; v [B, T, HV, V]
    with HV a multiple of H; g, beta [B, T, HV]; initial_state None or [B, HV, K, V]; all float.
    `where` (the op's name) starts the error."""
    named = dict(q=q, k=k, v=v, g=g, beta=beta)
    if initial_state is not None:
        named["initial_state"] = initial_state
    for name, x in named.items():
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{where}: `{name}` must be floating point, got {x.dtype}")
    if q.ndim != 4:
        raise ValueError(f"{where}: `q` must be [B, T, H, K], got shape {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"{where}: `k` shape {k.shape} must equal `q` shape {q.shape}")
    B, T, H, K = q.shape
    if T == 0:
        raise ValueError(f"{where}: sequence length T (axis 1 of `q`) must be >= 1, got 0")
    if v.ndim != 4 or v.shape[:2] != (B, T):
        raise ValueError(f"{where}: `v` must be [B={B}, T={T}, HV, V], got shape {v.shape}")
    HV, V = v.shape[2], v.shape[3]
    check_grouping(where, HV, H)
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, HV):
            raise ValueError(f"{where}: `{name}` must be [B, T, HV]={(B, T, HV)}, got shape {x.shape}")
    if initial_state is not None and initial_state.shape != (B, HV, K, V):
        raise ValueError(f"{where}: `initial_state` must be [B, HV, K, V]={(B, HV, K, V)}, got shape "
                         f"{initial_state.shape}")


def apply_rule(where: str, forms: dict[str, Callable], q, k, v, g, beta, *, scale, initial_state,
               output_final_state, impl, chunk_size):
    """The public entry point of a fast-weight op, around its forms.

    Checks the arguments (`impl` "auto" or a key of `forms`), fills the defaults (scale = K ** -0.5,
    a zero initial state), runs `forms[impl]` ("auto": "chunked") and returns (o [B, T, HV, V] in
    v.dtype, final state [B, HV, K, V] float32 or None). A form is `fn(q, k, v, g, beta, *, scale,
    initial_state, chunk_size) -> (o float32, final state float32)`.
    """
    check_options(impl, chunk_size, impls=("auto", *forms), where=where)
    check_sequence(where, q, k, v, g, beta, initial_state)
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    if scale is None:
        scale = K ** -0.5
    if initial_state is None:
        initial_state = jnp.zeros((B, HV, K, V), jnp.float32)
    form = forms["chunked" if impl == "auto" else impl]
    o, final_state = form(q, k, v, g, beta, scale=scale, initial_state=initial_state, chunk_size=chunk_size)
    return o.astype(v.dtype), (final_state if output_final_state else None)


def grouped_step(where: str, write: Callable, q, k, v, g, beta, state, *, scale):
    """One token of a gated fast-weight rule, whose own part is `write`.

    Per value head: S <- exp(g) S, then S <- write(k, v, beta, S), then o = S^T (scale q). Value
    head h reads key head h // (HV // H) through a group axis (q, k are never copied per value head).

    Args:
      where: the op's name, for the error. write: (k [B, H, K], v [B, H, G, V], beta [B, H, G],
        decayed state [B, H, G, K, V]) -> new state, all float32.
      q, k: [B, H, K] key heads.  v: [B, HV, V].  g, beta: [B, HV].  state: [B, HV, K, V] float32.
    Returns:
      (o [B, HV, V] float32, new state [B, HV, K, V] float32).
    """
    f32 = jnp.float32
    batch, heads, dk = k.shape
    value_heads, dv = v.shape[1], v.shape[2]
    check_grouping(where, value_heads, heads)
    group = value_heads // heads
    by_key_head = lambda x: x.astype(f32).reshape(batch, heads, group, *x.shape[2:])
    q, k = q.astype(f32), k.astype(f32)
    v, g, beta = by_key_head(v), by_key_head(g), by_key_head(beta)          # [B, H, G, ...]
    state = write(k, v, beta, by_key_head(state) * jnp.exp(g)[..., None, None])   # [B, H, G, K, V]
    o = jnp.einsum("bhk,bhgkv->bhgv", q * scale, state, precision=jax.lax.Precision.HIGHEST)
    return o.reshape(batch, value_heads, dv), state.reshape(batch, value_heads, dk, dv)


def scan_over_time(step: Callable, q, k, v, g, beta, *, scale, initial_state):
    """A rule over a sequence as a `lax.scan` of its one-token `step(q, k, v, g, beta, state, *,
    scale) -> (o, state)` over the T axis of q, k [B, T, H, K], v [B, T, HV, V], g, beta [B, T, HV].
    Returns (o [B, T, HV, V] float32, final state [B, HV, K, V] float32)."""
    def body(state, inputs):
        o, state = step(*inputs, state, scale=scale)
        return state, o

    time_major = [jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta)]
    final_state, o = jax.lax.scan(body, initial_state.astype(jnp.float32), time_major)
    return jnp.moveaxis(o, 0, 1), final_state
