"""The JetBlock mixer against a torch reference that follows the published code (NVlabs/Jet-Nemotron
@94cbd124, jetai/modeling/hf/{jet_block.py,dynamic_conv.py}: the `_forward_naive` / `_step_naive`
dynamic conv) with transformers' pure-torch gated delta rule in place of fla's kernels."""
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn
from transformers.models.qwen3_next.modeling_qwen3_next import (torch_chunk_gated_delta_rule,
                                                                 torch_recurrent_gated_delta_rule)

from sleep_jax.layers import causal_depthwise_conv
from sleep_jax.layers.jet import JetMixer, dynamic_causal_conv
from sleep_jax.model import ModelConfig


class DynamicConvReference(nn.Module):
    """`DynamicShortConvolution` with the naive paths: kernels = w2(silu(w1 g)) as (d w), w innermost."""

    def __init__(self, channels, kernel_size, generator_input, reduction):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel_generator = nn.Sequential(OrderedDict([
            ("w1", nn.Linear(generator_input, channels // reduction, bias=False)), ("act", nn.SiLU()),
            ("w2", nn.Linear(channels // reduction, channels * kernel_size, bias=True))]))

    def get_kernel(self, g):
        return self.kernel_generator(g).unflatten(-1, (-1, self.kernel_size))        # [..., D, W]

    def forward(self, x, generator_input):
        """x [B, T, D] from an empty cache -> (silu(conv), cache [B, D, W]: the last W inputs)."""
        B, T, D = x.shape
        W = self.kernel_size
        windows = F.pad(x.transpose(1, 2), (W - 1, 0)).unfold(2, W, 1).permute(0, 2, 1, 3)   # [B, T, D, W]
        y = (windows * self.get_kernel(generator_input)).sum(-1)
        cache = x.new_zeros(B, D, W)
        cache[:, :, -min(W, T):] = x[:, -min(W, T):].transpose(1, 2)
        return F.silu(y), cache

    def step(self, x, cache, generator_input):
        """x [B, D], cache [B, D, W] -> (silu(conv), new cache): roll, append, sum."""
        cache = cache.roll(shifts=-1, dims=-1).clone()
        cache[:, :, -1] = x
        return F.silu((cache * self.get_kernel(generator_input)).sum(-1)), cache


class JetBlockReference(nn.Module):
    """`JetBlock`: silu q/k (no conv), dynamic conv on v, GDN gates, delta rule with L2-normalised
    q/k, FusedRMSNormGated (rmsnorm(o) * w * silu(g_proj x)), o_proj. Parameter names as published."""

    def __init__(self, hidden, heads, head_dim, expand_v, conv_size, reduction, norm_eps):
        super().__init__()
        self.heads, self.head_k_dim, self.head_v_dim = heads, head_dim, int(head_dim * expand_v)
        key_dim, value_dim = heads * head_dim, int(heads * head_dim * expand_v)
        self.q_proj = nn.Linear(hidden, key_dim, bias=False)
        self.k_proj = nn.Linear(hidden, key_dim, bias=False)
        self.v_proj = nn.Linear(hidden, value_dim, bias=False)
        self.b_proj = nn.Linear(hidden, heads, bias=False)
        self.a_proj = nn.Linear(hidden, heads, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        self.dt_bias = nn.Parameter(torch.empty(heads).uniform_(-4, 0))
        self.dynamic_conv1d = DynamicConvReference(value_dim, conv_size, hidden, reduction)
        self.g_proj = nn.Linear(hidden, value_dim, bias=False)
        self.o_norm = nn.Module()
        self.o_norm.weight = nn.Parameter(torch.ones(self.head_v_dim))
        self.o_proj = nn.Linear(value_dim, hidden, bias=False)
        self.norm_eps = norm_eps

    def forward(self, x, state=None):
        """x [B, T, D]; state None (prefill) or {"S", "conv" [B, D, W]} with T == 1 (decode)."""
        q, k = F.silu(self.q_proj(x)), F.silu(self.k_proj(x))
        if state is None:
            v, conv = self.dynamic_conv1d(self.v_proj(x), x)
        else:
            v, conv = self.dynamic_conv1d.step(self.v_proj(x)[:, 0], state["conv"], x[:, 0])
            v = v[:, None]
        q, k = (t.unflatten(-1, (self.heads, self.head_k_dim)) for t in (q, k))
        v = v.unflatten(-1, (self.heads, self.head_v_dim))
        beta = self.b_proj(x).sigmoid()
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)
        rule = torch_chunk_gated_delta_rule if x.shape[1] > 64 else torch_recurrent_gated_delta_rule
        o, S = rule(q, k, v, g, beta, initial_state=None if state is None else state["S"], output_final_state=True,
                    use_qk_l2norm_in_kernel=True)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.norm_eps) * self.o_norm.weight
        o = o * F.silu(self.g_proj(x).unflatten(-1, (self.heads, self.head_v_dim)))
        return self.o_proj(o.flatten(-2)), {"S": S, "conv": conv}


D, H, K, EXPAND_V, W, REDUCTION = 16, 2, 8, 2, 4, 4
V = K * EXPAND_V


def reference_block(seed=0):
    """A random reference JetBlock (generator weights random too, output-norm weight perturbed)."""
    torch.manual_seed(seed)
    block = JetBlockReference(D, H, K, EXPAND_V, W, REDUCTION, 1e-5)
    with torch.no_grad():
        block.o_norm.weight.add_(0.3 * torch.randn(V))
        block.dynamic_conv1d.kernel_generator.w2.bias.normal_(0, 0.5)
    return block


def mixer_from(block, impl="recurrent", chunk_size=16) -> JetMixer:
    """Our mixer with the reference's weights (PyTorch [out, in] -> [in, ...out])."""
    m = JetMixer(D, heads=H, head_dim=K, v_head_dim=V, conv_kernel=W, generator_reduction=REDUCTION, norm_eps=1e-5,
                 impl=impl, chunk_size=chunk_size, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    t = {name: p.detach().numpy() for name, p in block.named_parameters()}
    generator = "dynamic_conv1d.kernel_generator"
    values = {"w_q": t["q_proj.weight"].T.reshape(D, H, K), "w_k": t["k_proj.weight"].T.reshape(D, H, K),
              "w_v": t["v_proj.weight"].T.reshape(D, H, V), "w_z": t["g_proj.weight"].T.reshape(D, H, V),
              "w_beta": t["b_proj.weight"].T, "w_a": t["a_proj.weight"].T, "A_log": t["A_log"],
              "dt_bias": t["dt_bias"], "w_o": t["o_proj.weight"].T.reshape(H, V, D),
              "w_gen1": t[f"{generator}.w1.weight"].T, "w_gen2": t[f"{generator}.w2.weight"].T.reshape(-1, H, V, W),
              "b_gen2": t[f"{generator}.w2.bias"].reshape(H, V, W)}
    for name, value in values.items():
        getattr(m, name).set_value(jnp.asarray(value))
    m.o_norm.scale.set_value(jnp.asarray(t["o_norm.weight"]))
    return m


def rel(got, want):
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("impl", ["recurrent", "chunked", "pallas"])
def test_window_and_steps_match_the_reference(impl):
    """A 70-token window (the reference's chunked delta rule), then 3 decode steps."""
    block = reference_block()
    m = mixer_from(block, impl=impl)
    x = np.random.default_rng(0).standard_normal((2, 73, D)).astype(np.float32)
    with torch.no_grad():
        want, ref_state = block(torch.tensor(x[:, :70]))
    got, state = jax.jit(lambda x, s: m.span(x, s)[:2])(jnp.asarray(x[:, :70]), m.init_state(2))
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=0, atol=1e-5)
    assert rel(state["S"], ref_state["S"].numpy()) < 1e-4
    # the published cache keeps the last W inputs; the state keeps the W-1 the next token reads
    assert rel(state["conv"], ref_state["conv"].numpy()[:, :, 1:].transpose(0, 2, 1)) < 1e-4
    step = jax.jit(lambda x, s: m.step(x, s)[:2])
    for t in range(70, 73):
        with torch.no_grad():
            want, ref_state = block(torch.tensor(x[:, t:t + 1]), ref_state)
        got, state = step(jnp.asarray(x[:, t]), state)
        np.testing.assert_allclose(np.asarray(got), want.numpy()[:, 0], rtol=0, atol=1e-5)
        assert rel(state["S"], ref_state["S"].numpy()) < 1e-4


def test_split_sequence_and_steps_equal_the_whole_window():
    m = mixer_from(reference_block(1))
    x = jax.random.normal(jax.random.key(0), (2, 9, D))
    run = jax.jit(lambda x, s: m.span(x, s)[:2])
    whole, final = run(x, m.init_state(2))
    first, state = run(x[:, :2], m.init_state(2))             # shorter than the conv tail
    second, state = run(x[:, 2:], state)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, atol=1e-5)
    np.testing.assert_allclose(state["S"], final["S"], atol=1e-5)
    np.testing.assert_array_equal(state["conv"], final["conv"])
    step, state, ys = jax.jit(lambda x, s: m.step(x, s)[:2]), m.init_state(2), []
    for t in range(9):
        y, state = step(x[:, t], state)
        ys.append(y)
    np.testing.assert_allclose(jnp.stack(ys, 1), whole, atol=1e-5)
    assert state["conv"].shape == (2, W - 1, H * V) and state["S"].shape == (2, H, K, V)


def test_dynamic_conv_with_constant_kernels_is_the_static_conv():
    """A generator that ignores its input (W_gen2 = 0, the initialisation) is a static depthwise conv."""
    x = jax.random.normal(jax.random.key(1), (2, 7, 6))
    weight = jax.random.normal(jax.random.key(2), (W, 6))
    tail = jax.random.normal(jax.random.key(3), (2, W - 1, 6))
    kernels = jnp.broadcast_to(weight.T, (2, 7, 6, W))
    for got, want in zip(dynamic_causal_conv(x, kernels, tail), causal_depthwise_conv(x, weight, tail)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    m = JetMixer(D, heads=H, head_dim=K, v_head_dim=V, conv_kernel=W, generator_reduction=REDUCTION, norm_eps=1e-5,
                 impl="recurrent", chunk_size=16, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    kernels = m._kernels(jax.random.normal(jax.random.key(4), (3, D)))
    np.testing.assert_array_equal(kernels, jnp.broadcast_to(m.b_gen2[...].reshape(H * V, W), (3, H * V, W)))


@pytest.mark.parametrize("fields, message", [
    ({"jet_heads": 0}, "model.jet_heads must be >= 1"),
    ({"jet_conv_kernel": 0}, "model.jet_conv_kernel must be >= 1"),
    ({"jet_heads": 1, "jet_v_head_dim": 4, "jet_generator_reduction": 8}, "model.jet_generator_reduction=8"),
    ({"jet_norm_eps": 0.0}, "model.jet_norm_eps must be > 0")])
def test_model_config_rejects_bad_jet_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(vocab_size=8, pattern="J", **fields)
