"""Public entry point of the gated delta rule: argument checks and impl dispatch.

Every impl takes q, k with H key heads and v, g, beta with HV value heads (HV a multiple of H) and
maps value head h to key head h // (HV // H) itself, by a group axis or an index map, so q and k
are never copied per value head."""
import jax.numpy as jnp

from sleep_jax.ops.checks import CHUNK_SIZES, IMPLS, check_options, check_sequence
from sleep_jax.ops.delta_rule.chunked import chunked_gated_delta_rule
from sleep_jax.ops.delta_rule.reference import gated_delta_rule_step, recurrent_gated_delta_rule


def _check(q, k, v, g, beta, initial_state, impl, chunk_size):
    check_options(impl, chunk_size)
    check_sequence("gated_delta_rule", q, k, v, g, beta, initial_state)


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
