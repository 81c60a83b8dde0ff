"""Choosing the next token from logits: greedy, temperature, top-k, top-p, reproducibly per slot."""
import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How `Engine.generate` picks tokens.

    temperature: 0 = greedy (argmax); > 0 divides the logits before sampling.
    top_k: 0 = no limit; k > 0 keeps the k most likely tokens.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = all).
    seed: the token at position p is drawn with key fold_in(seed, p), so a session's tokens do not
      depend on its slot, on how generation is split into calls or on which other slots run (a
      restored session continues the same way in any slot; equal sessions draw equal tokens).
    """
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if int(self.top_k) < 0:
            raise ValueError(f"sampling.top_k must be >= 0 (0 = no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= int(self.seed) < 2 ** 32:
            raise ValueError(f"sampling.seed must be in [0, 2**32), got {self.seed}")


def sample_tokens(logits: jax.Array, positions: jax.Array, seed: jax.Array,
                  *, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """int32 [B] tokens from logits float32 [B, V]; positions int32 [B] key each row's draw."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs          # probability of the more likely tokens
        threshold = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    base = jax.random.key(seed)
    keys = jax.vmap(lambda p: jax.random.fold_in(base, p))(positions)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
