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
      q, k: [B, H, K] key heads.  v: [B, HV, V] with HV a multiple of H: value head h reads key
        head h // (HV // H) (grouped value heads; H == HV is the plain case).
      g, beta: [B, HV].  state: [B, HV, K, V] float32.
      scale: multiplier of q.
    Returns:
      (o [B, HV, V] float32, new state [B, HV, K, V] float32).
    """
    f32 = jnp.float32
    batch, heads, dk = k.shape
    value_heads, dv = v.shape[1], v.shape[2]
    if value_heads % heads:
        raise ValueError(f"gated_delta_rule_step: value heads of `v` ({value_heads}) must be a "
                         f"multiple of the key heads of `q`/`k` ({heads})")
    group = value_heads // heads
    by_key_head = lambda x: x.astype(f32).reshape(batch, heads, group, *x.shape[2:])
    q, k = q.astype(f32), k.astype(f32)
    v, g, beta = by_key_head(v), by_key_head(g), by_key_head(beta)          # [B, H, G, ...]
    state = by_key_head(state) * jnp.exp(g)[..., None, None]                 # [B, H, G, K, V]
    predicted = jnp.einsum("bhk,bhgkv->bhgv", k, state, precision=_HIGHEST)
    u = beta[..., None] * (v - predicted)
    state = state + k[:, :, None, :, None] * u[..., None, :]
    o = jnp.einsum("bhk,bhgkv->bhgv", q * scale, state, precision=_HIGHEST)
    return o.reshape(batch, value_heads, dv), state.reshape(batch, value_heads, dk, dv)


def recurrent_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state):
    """The gated delta rule as a scan over time, one token per step (`gated_delta_rule_step`).

    Args:
      q, k: [B, T, H, K] key heads.  v: [B, T, HV, V], HV a multiple of H (value head h reads
        key head h // (HV // H)).  g, beta: [B, T, HV] (g <= 0: log forget gate).  Any float dtype.
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
