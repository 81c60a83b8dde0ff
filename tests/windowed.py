"""The ordinary (one-pass) forward of a windowed sequence, written independently of `sleep.py`:
what sleep with N = 1 must equal, with the conv tail crossing window boundaries or not."""
import jax.numpy as jnp

from sleep_jax.windows import Span


def zero_tails(state: dict) -> dict:
    """Every stateful block's state with S kept and every other entry (its conv tail) zeroed."""
    return {name: {key: value if key == "S" else jnp.zeros_like(value) for key, value in layer.items()}
            for name, layer in state.items()}


def windowed_forward(model, tokens, *, window: int, eviction: str, carry_conv_tail: bool):
    """float32 logits [B, T, vocab] of one ordinary pass over `tokens` [B, T] under the window mask.

    carry_conv_tail: the whole sequence in one forward (the conv reads across window boundaries);
    else window by window, each window's conv starting from zeros (S carried; under sliding
    eviction each window also attends to the previous window's keys/values)."""
    if carry_conv_tail:
        return model(tokens, window=window, eviction=eviction)[0]
    batch, steps = tokens.shape
    state, past, outputs = model.init_state(batch), None, []
    for start in range(0, steps, window):
        positions = jnp.arange(start, start + window, dtype=jnp.int32)
        sliding = eviction == "sliding" and start > 0
        span = Span(positions, window=window, eviction=eviction, past_positions=positions - window if sliding else None)
        logits, state, kv = model.forward_span(model.embed(tokens[:, start:start + window]), span, zero_tails(state),
                                               past=past if sliding else None)
        outputs.append(logits)
        past = kv
    return jnp.concatenate(outputs, axis=1)
