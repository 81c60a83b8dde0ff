"""Public entry point of the gated Hebbian rule (the paper's Eq. 3): its forms, behind the shared
entry frame (`ops.common.apply_rule`).

Every form takes q, k with H key heads and v, g, beta with HV value heads (HV a multiple of H) and
maps value head h to key head h // (HV // H) itself, by a group axis, so q and k are never copied
per value head. There is no Pallas form."""
from sleep_jax.ops.common import apply_rule
from sleep_jax.ops.hebbian.chunked import chunked_gated_hebbian_rule
from sleep_jax.ops.hebbian.reference import gated_hebbian_rule_step, recurrent_gated_hebbian_rule

FORMS = {"recurrent": recurrent_gated_hebbian_rule, "chunked": chunked_gated_hebbian_rule}
IMPLS = ("auto", *FORMS)


def gated_hebbian_rule(q, k, v, g, beta, *, scale=None, initial_state=None,
                       output_final_state=False, impl="auto", chunk_size=64):
    """Gated Hebbian rule over a sequence: S <- exp(g_t) S + beta_t k_t v_t^T, o_t = S^T (scale q_t).

    Args:
      q, k: [B, T, H, K].  v: [B, T, HV, V] with HV a multiple of H (grouped value heads).
      g: [B, T, HV] log forget gate (<= 0).  beta: [B, T, HV] write strength.
      scale: multiplier of q; defaults to K ** -0.5.
      initial_state: [B, HV, K, V] or None (zeros).
      output_final_state: whether to return the final state.
      impl: "recurrent" | "chunked" | "auto" (= "chunked").
      chunk_size: 16, 32 or 64 (chunked form).
    Returns:
      (o [B, T, HV, V] in v.dtype, final_state [B, HV, K, V] float32 or None).
    """
    return apply_rule("gated_hebbian_rule", FORMS, q, k, v, g, beta, scale=scale, initial_state=initial_state,
                      output_final_state=output_final_state, impl=impl, chunk_size=chunk_size)


__all__ = ["gated_hebbian_rule", "gated_hebbian_rule_step", "IMPLS", "FORMS"]
