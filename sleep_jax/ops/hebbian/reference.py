"""The gated Hebbian rule (the paper's Eq. 3) as a scan over time: the reference every other form
is tested against.

Per value head, with state S [K, V] in float32 (a Mamba2-style scalar gate, no delta correction):

    S <- exp(g_t) * S + beta_t * k_t v_t^T
    o_t = S^T (scale * q_t)
"""
from sleep_jax.ops.common import grouped_step, scan_over_time


def _write(k, v, beta, state):
    """The Hebbian write into the decayed state [B, H, G, K, V]: S + k (beta v)^T."""
    return state + k[:, :, None, :, None] * (beta[..., None] * v)[..., None, :]


def gated_hebbian_rule_step(q, k, v, g, beta, state, *, scale):
    """One token of the gated Hebbian rule; arguments and results as in `ops.common.grouped_step`
    (q, k [B, H, K]; v [B, HV, V]; g, beta [B, HV]; state [B, HV, K, V] -> (o, state) float32)."""
    return grouped_step("gated_hebbian_rule_step", _write, q, k, v, g, beta, state, scale=scale)


def recurrent_gated_hebbian_rule(q, k, v, g, beta, *, scale, initial_state, chunk_size=None):
    """The gated Hebbian rule as a scan over time of `gated_hebbian_rule_step` (`ops.common.scan_over_time`):
    q, k [B, T, H, K], v [B, T, HV, V], g, beta [B, T, HV] -> (o [B, T, HV, V], final state) float32.
    `chunk_size` is not used."""
    return scan_over_time(gated_hebbian_rule_step, q, k, v, g, beta, scale=scale, initial_state=initial_state)
