"""Public entry point of the gated delta rule: its forms, behind the shared entry frame.

Every form takes q, k with H key heads and v, g, beta with HV value heads (HV a multiple of H) and
maps value head h to key head h // (HV // H) itself, by a group axis or an index map, so q and k
are never copied per value head."""
from sleep_jax.ops.common import CHUNK_SIZES, IMPLS, apply_rule
from sleep_jax.ops.delta_rule.chunked import chunked_gated_delta_rule
from sleep_jax.ops.delta_rule.reference import gated_delta_rule_step, recurrent_gated_delta_rule


def _pallas(q, k, v, g, beta, *, scale, initial_state, chunk_size):
    """The kernels; on CPU they run in the Pallas interpreter (interpret=True), elsewhere compiled.
    Under a multi-device mesh set with jax.set_mesh they run in a shard_map over batch and heads.
    Imported on first use: loading Pallas and its lowerings costs ~0.7 s that other forms never need."""
    from sleep_jax.ops.delta_rule.pallas import on_ambient_mesh
    return on_ambient_mesh(q, k, v, g, beta, scale=scale, initial_state=initial_state, chunk_size=chunk_size)


FORMS = {"recurrent": recurrent_gated_delta_rule, "chunked": chunked_gated_delta_rule, "pallas": _pallas}
assert IMPLS == ("auto", *FORMS)   # the impls model.delta_rule_impl names


def gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None,
                     output_final_state=False, impl="auto", chunk_size=64):
    """Gated delta rule over a sequence.

    Args:
      q, k: [B, T, H, K].  v: [B, T, HV, V] with HV a multiple of H (grouped value heads).
      g: [B, T, HV] log forget gate (<= 0).  beta: [B, T, HV] write strength in (0, 1).
      scale: multiplier of q; defaults to K ** -0.5.
      initial_state: [B, HV, K, V] or None (zeros).
      output_final_state: whether to return the final state.
      impl: "recurrent" | "chunked" | "pallas" | "auto" (= "chunked" on every backend until the
        kernels are measured on hardware).
      chunk_size: 16, 32 or 64 (chunked and pallas forms).
    Returns:
      (o [B, T, HV, V] in v.dtype, final_state [B, HV, K, V] float32 or None).
    """
    return apply_rule("gated_delta_rule", FORMS, q, k, v, g, beta, scale=scale, initial_state=initial_state,
                      output_final_state=output_final_state, impl=impl, chunk_size=chunk_size)


__all__ = ["gated_delta_rule", "gated_delta_rule_step", "IMPLS", "CHUNK_SIZES", "FORMS"]
