"""The gated delta rule as a scan over time: the reference every other form is tested against.

Per value head, with state S [K, V] in float32:

    S <- exp(g_t) * S
    u_t = beta_t * (v_t - S^T k_t)
    S <- S + k_t u_t^T
    o_t = S^T (scale * q_t)
"""
import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def gated_delta_rule_step(q, k, v, g, beta, state, *, scale):
    """One token of the gated delta rule.

    Args:
      q, k: [B, HV, K] (key heads already repeated to the value heads).
      v: [B, HV, V].  g, beta: [B, HV].  state: [B, HV, K, V] float32.
      scale: multiplier of q.
    Returns:
      (o [B, HV, V] float32, new state [B, HV, K, V] float32).
    """
    f32 = jnp.float32
    q, k, v, g, beta = (x.astype(f32) for x in (q, k, v, g, beta))
    state = state * jnp.exp(g)[..., None, None]
    predicted = jnp.einsum("bhk,bhkv->bhv", k, state, precision=_HIGHEST)
    u = beta[..., None] * (v - predicted)
    state = state + k[..., :, None] * u[..., None, :]
    o = jnp.einsum("bhk,bhkv->bhv", q * scale, state, precision=_HIGHEST)
    return o, state


def recurrent_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state):
    """The gated delta rule as a scan over time, one token per step (`gated_delta_rule_step`).

    Args:
      q, k: [B, T, HV, K] (key heads already repeated to the value heads).
      v: [B, T, HV, V].  g, beta: [B, T, HV] (g <= 0: log forget gate).  Any float dtype.
      scale: multiplier of q.  initial_state: [B, HV, K, V].
    Returns:
      (o [B, T, HV, V] float32, final state [B, HV, K, V] float32). All arithmetic is float32.
    """
    def step(state, inputs):
        o, state = gated_delta_rule_step(*inputs, state, scale=scale)
        return state, o

    time_major = [jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta)]
    final_state, o = jax.lax.scan(step, initial_state.astype(jnp.float32), time_major)
    return jnp.moveaxis(o, 0, 1), final_state
