"""The gated delta rule as a scan over time: the reference every other form is tested against.

Per value head, with state S [K, V] in float32:

    S <- exp(g_t) * S
    u_t = beta_t * (v_t - S^T k_t)
    S <- S + k_t u_t^T
    o_t = S^T (scale * q_t)
"""
import jax
import jax.numpy as jnp

from sleep_jax.ops.common import grouped_step, scan_over_time


def _write(k, v, beta, state):
    """The delta rule's write into the decayed state [B, H, G, K, V]: u = beta (v - S^T k), S + k u^T."""
    predicted = jnp.einsum("bhk,bhgkv->bhgv", k, state, precision=jax.lax.Precision.HIGHEST)
    u = beta[..., None] * (v - predicted)
    return state + k[:, :, None, :, None] * u[..., None, :]


def gated_delta_rule_step(q, k, v, g, beta, state, *, scale):
    """One token of the gated delta rule.

    Args:
      q, k: [B, H, K] key heads.  v: [B, HV, V] with HV a multiple of H: value head h reads key
        head h // (HV // H) (grouped value heads; H == HV is the plain case).
      g, beta: [B, HV].  state: [B, HV, K, V] float32.
      scale: multiplier of q.
    Returns:
      (o [B, HV, V] float32, new state [B, HV, K, V] float32).
    """
    return grouped_step("gated_delta_rule_step", _write, q, k, v, g, beta, state, scale=scale)


def recurrent_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, chunk_size=None):
    """The gated delta rule as a scan over time, one token per step (`gated_delta_rule_step`).

    Args:
      q, k: [B, T, H, K] key heads.  v: [B, T, HV, V], HV a multiple of H (value head h reads
        key head h // (HV // H)).  g, beta: [B, T, HV] (g <= 0: log forget gate).  Any float dtype.
      scale: multiplier of q.  initial_state: [B, HV, K, V].  chunk_size: not used (one token a step).
    Returns:
      (o [B, T, HV, V] float32, final state [B, HV, K, V] float32). All arithmetic is float32.
    """
    return scan_over_time(gated_delta_rule_step, q, k, v, g, beta, scale=scale, initial_state=initial_state)
