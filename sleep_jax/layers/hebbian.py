"""The gated Hebbian mixer ("H"): the paper's Eq. 3 rule in GDN's layer.

    S_t = a_t S_{t-1} + b_t k_t v_t^T,   a_t = exp(g_t)      (a Mamba2-style scalar gate per head)
    o_t = S_t^T (scale q_t)

The paper explains sleep with this rule (its fast weights are written by a plain outer product,
with no delta correction u_t = beta (v_t - S^T k_t)) but never ablates it. Everything else is
GDN's: the parameters and sizes (`model.gdn_*`, `model.conv_kernel`), the causal conv, the L2
normalised q/k, the gates (a_t = exp(g_t), b_t = beta_t) and the gated output norm, so a model
with pattern "AH" differs from "AG" only in the fast-weight rule.
"""
from sleep_jax import ops
from sleep_jax.layers.gdn import GDNMixer
from sleep_jax.ops import hebbian


class HebbianMixer(GDNMixer):
    impls = hebbian.IMPLS
    rule = staticmethod(ops.gated_hebbian_rule)
    rule_step = staticmethod(ops.gated_hebbian_rule_step)
