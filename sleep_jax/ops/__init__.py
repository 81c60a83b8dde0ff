"""The math of the model, without parameters. Other modules call only these entry points."""
from sleep_jax.ops.delta_rule import gated_delta_rule, gated_delta_rule_step
from sleep_jax.ops.hebbian import gated_hebbian_rule, gated_hebbian_rule_step

__all__ = ["gated_delta_rule", "gated_delta_rule_step", "gated_hebbian_rule", "gated_hebbian_rule_step"]
