"""Public entry point of the gated delta rule: argument checks and impl dispatch.

Every impl takes q, k with H key heads and v, g, beta with HV value heads (HV a multiple of H) and
maps value head h to key head h // (HV // H) itself, by a group axis or an index map, so q and k
are never copied per value head."""
import jax.numpy as jnp

from sleep_jax.ops.delta_rule.chunked import chunked_gated_delta_rule
from sleep_jax.ops.delta_rule.reference import gated_delta_rule_step, recurrent_gated_delta_rule

IMPLS = ("auto", "recurrent", "chunked", "pallas")
CHUNK_SIZES = (16, 32, 64)


def _check(q, k, v, g, beta, initial_state, impl, chunk_size):
    named = dict(q=q, k=k, v=v, g=g, beta=beta)
    if initial_state is not None:
        named["initial_state"] = initial_state
    for name, x in named.items():
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"gated_delta_rule: `{name}` must be floating point, got {x.dtype}")
    if impl not in IMPLS:
        raise ValueError(f"gated_delta_rule: unknown `impl`={impl!r}; expected one of {IMPLS}")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"gated_delta_rule: `chunk_size`={chunk_size} must be one of {CHUNK_SIZES}")
    if q.ndim != 4:
        raise ValueError(f"gated_delta_rule: `q` must be [B, T, H, K], got shape {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"gated_delta_rule: `k` shape {k.shape} must equal `q` shape {q.shape}")
    B, T, H, K = q.shape
    if T == 0:
        raise ValueError("gated_delta_rule: sequence length T (axis 1 of `q`) must be >= 1, got 0")
    if v.ndim != 4 or v.shape[:2] != (B, T):
        raise ValueError(f"gated_delta_rule: `v` must be [B={B}, T={T}, HV, V], got shape {v.shape}")
    HV, V = v.shape[2], v.shape[3]
    if HV % H:
        raise ValueError(
            f"gated_delta_rule: value heads of `v` ({HV}) must be a multiple of the key heads of `q`/`k` ({H})")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, HV):
            raise ValueError(f"gated_delta_rule: `{name}` must be [B, T, HV]={(B, T, HV)}, got shape {x.shape}")
    if initial_state is not None and initial_state.shape != (B, HV, K, V):
        raise ValueError(
            f"gated_delta_rule: `initial_state` must be [B, HV, K, V]={(B, HV, K, V)}, got shape {initial_state.shape}")


def resolve_impl(impl: str) -> str:
    """The impl that `auto` stands for on the default backend."""
    if impl != "auto":
        return impl
    return "chunked"


def gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None,
                     output_final_state=False, impl="auto", chunk_size=64):
    """Gated delta rule over a sequence.

    Args:
      q, k: [B, T, H, K].  v: [B, T, HV, V] with HV a multiple of H (grouped value heads).
      g: [B, T, HV] log forget gate (<= 0).  beta: [B, T, HV] write strength in (0, 1).
      scale: multiplier of q; defaults to K ** -0.5.
      initial_state: [B, HV, K, V] or None (zeros).
      output_final_state: whether to return the final state.
      impl: "recurrent" | "chunked" | "pallas" | "auto".
      chunk_size: 16, 32 or 64 (chunked and pallas forms).
    Returns:
      (o [B, T, HV, V] in v.dtype, final_state [B, HV, K, V] float32 or None).
    """
    _check(q, k, v, g, beta, initial_state, impl, chunk_size)
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    if scale is None:
        scale = K ** -0.5
    if initial_state is None:
        initial_state = jnp.zeros((B, HV, K, V), jnp.float32)
    impl = resolve_impl(impl)
    if impl == "recurrent":
        o, final_state = recurrent_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state)
    elif impl == "chunked":
        o, final_state = chunked_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                                  chunk_size=chunk_size)
    elif impl == "pallas":
        # Kernels; on CPU they run in the Pallas interpreter (interpret=True), elsewhere compiled.
        # Under a multi-device mesh set with jax.set_mesh they run in a shard_map over batch and heads.
        from sleep_jax.ops.delta_rule.pallas import on_ambient_mesh
        o, final_state = on_ambient_mesh(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                         chunk_size=chunk_size)
    else:
        raise AssertionError(f"unhandled impl {impl!r}")  # _check admits only IMPLS
    return o.astype(v.dtype), (final_state if output_final_state else None)


__all__ = ["gated_delta_rule", "gated_delta_rule_step", "IMPLS", "CHUNK_SIZES", "resolve_impl"]
