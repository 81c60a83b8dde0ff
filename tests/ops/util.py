"""Inputs shared by the fast-weight op tests."""
import jax.numpy as jnp
import numpy as np


def random_inputs(seed, B, T, H, K, V, HV=None):
    """float32 q, k (L2-normalised, like the model's), v, g in [-2, 0], beta in (0, 1), initial state.

    numpy, not jax.random: eager jax ops would compile once per new shape.
    """
    HV = HV or H
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((B, T, H, K))
    inputs = dict(
        q=rng.standard_normal((B, T, H, K)),
        k=k / np.linalg.norm(k, axis=-1, keepdims=True),
        v=rng.standard_normal((B, T, HV, V)),
        g=-2.0 * rng.uniform(size=(B, T, HV)),
        beta=1.0 / (1.0 + np.exp(-rng.standard_normal((B, T, HV)))),
        initial_state=rng.standard_normal((B, HV, K, V)))
    return {name: jnp.asarray(x, jnp.float32) for name, x in inputs.items()}
