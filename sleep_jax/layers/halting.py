"""The halting head of adaptive sleep (`sleep.halting="learned"`, `model.halting_head=True`).

After each sleep pass over a window it reads a summary of that pass and gives the probability of
stopping there: lambda = sigmoid(features @ w), with features = [the pass's hidden states
mean-pooled over the window's tokens and RMS-normalised (D), log(relative change + 1e-6) of each
stateful block's fast weights in that pass, the change capped at 1e6 (n), 1 (the bias)]. The
relative changes enter without gradient (they are a reading of the state, not a path into it).
w is one [D + n + 1, 1] matrix, so Muon trains all of it, bias included, at the hidden weights'
rate (a vector would get AdamW's far smaller one, and 300 steps of it barely move the bias). w
starts at zero but for the bias, `STOP_BIAS`, so a new head stops at every pass with the same small
probability: with `sleep.halt_threshold` = 0.5 and N <= 5 a new head runs every pass, and the
ponder cost teaches it to stop sooner (Ouro's exit gate, read per sleep pass instead of per
universal-transformer step).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.layers.common import make_param

STOP_BIAS = -2.0       # sigmoid(-2) = 0.12 per pass at initialisation
CHANGE_FLOOR = 1e-6    # log(change + CHANGE_FLOOR): an unchanged state reads as log(1e-6)
CHANGE_CEILING = 1e6   # a larger change (the first pass from S = 0 changes infinitely) reads as 1e6


class HaltingHead(nnx.Module):
    """[D + n + 1, 1] matrix + sigmoid over a pass's summary (module docstring); `weight[-1, 0]` is
    the bias.

    Args:
      d_model: D. stateful: n, the stateful blocks of the looped segment.
    """

    def __init__(self, d_model: int, stateful: int, *, param_dtype):
        weight = jnp.zeros((d_model + stateful + 1, 1), param_dtype).at[-1, 0].set(STOP_BIAS)
        self.weight = make_param(weight, (None, None))

    def __call__(self, hidden: jax.Array, changes: jax.Array) -> jax.Array:
        """hidden [B, L, D] (the pass's output), changes float32 [B, n] (`relative_changes`) ->
        stop probability float32 [B]."""
        pooled = jnp.mean(hidden.astype(jnp.float32), axis=1)
        pooled = pooled * jax.lax.rsqrt(jnp.mean(jnp.square(pooled), axis=-1, keepdims=True) + 1e-6)
        changes = jnp.log(jnp.minimum(jax.lax.stop_gradient(changes), CHANGE_CEILING) + CHANGE_FLOOR)
        features = jnp.concatenate([pooled, changes, jnp.ones_like(changes[:, :1])], axis=-1)
        return jax.nn.sigmoid(features @ self.weight[...].astype(jnp.float32))[:, 0]
