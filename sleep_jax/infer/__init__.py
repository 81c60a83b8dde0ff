"""Streaming inference with sleep: `Engine` (slots that read, sleep and generate) and `Sampling`."""
from sleep_jax.infer.engine import Engine, empty_slots
from sleep_jax.infer.sampling import Sampling, sample_tokens

__all__ = ["Engine", "Sampling", "empty_slots", "sample_tokens"]
