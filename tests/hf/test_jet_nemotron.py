"""Jet-Nemotron: parity of the imported model with a torch reference of the published stack
(NVlabs/Jet-Nemotron @94cbd124, jetai/modeling/hf/modeling_jet_nemotron.py: Qwen2-style attention
with q/k/v bias, optional sliding window, plain RMSNorm, pre-norm, SwiGLU; JetBlocks from
tests/layers/test_jet.py), export round trip, the 2B parameter count, sleep and conversion."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from safetensors.numpy import load_file
from safetensors.torch import save_file
from torch import nn

from sleep_jax import convert, hf
from tests.hf.test_families import greedy
from tests.layers.test_jet import JetBlockReference
from tests.windowed import windowed_forward

STEPS, NEW_TOKENS, VOCAB, SLEEP_WINDOW = 150, 16, 97, 8

TINY = {
    "architectures": ["JetNemotronForCausalLM"], "model_type": "jet_nemotron", "vocab_size": VOCAB,
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 5, "num_attention_heads": 4,
    "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "rope_scaling": None, "tie_word_embeddings": True, "layer_types": ["jet", "attn", "jet", "swa", "jet"],
    "efficient_attention_config": {
        "jet": {"conv_size": 4, "dconv_generator_reduction": 8, "dconv_implementation": "triton", "expand_v": 2.0,
                "head_dim": 16, "mode": "chunk", "norm_eps": "1e-5", "num_heads": 2},
        "swa": {"window_size": 5}}}

# jetai/modeling/configs/jetlm_2B.json, its architecture fields
JETLM_2B = {
    "model_type": "jet_nemotron", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
    "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_act": "silu",
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "tie_word_embeddings": True,
    "layer_types": ["jet"] * 14 + ["attn"] + ["jet"] * 4 + ["attn", "swa", "swa"] + ["jet"] * 6,
    "efficient_attention_config": {
        "jet": {"conv_size": 4, "dconv_generator_reduction": 8, "dconv_implementation": "triton",
                "expand_v": 2.6666666667, "head_dim": 96, "mode": "chunk", "norm_eps": "1e-5", "num_heads": 12},
        "swa": {"window_size": 1152}}}


class RMSNormReference(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class AttentionReference(nn.Module):
    """`JetNemotronAttention` (eager): GQA, q/k/v bias, RoPE (rotate_half), keys with q - k < window."""

    def __init__(self, hub, window=None):
        super().__init__()
        self.heads, self.kv_heads = hub["num_attention_heads"], hub["num_key_value_heads"]
        self.head_dim = hub["hidden_size"] // self.heads
        d = hub["hidden_size"]
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)
        self.window, self.theta = window, hub["rope_theta"]

    def rope(self, x, positions):
        inv_freq = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim)
        freqs = positions[:, None].float() * inv_freq
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, x, positions, cache):
        """x [B, T, D] at positions [T]; cache None or {"k", "v"} [B, KVH, S, Dh] of positions 0..S-1."""
        B, T, _ = x.shape
        q = self.rope(self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2), positions)
        k = self.rope(self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2), positions)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        keys = torch.arange(k.shape[2])
        allowed = keys[None] <= positions[:, None]
        if self.window:
            allowed &= positions[:, None] - keys[None] < self.window
        groups = self.heads // self.kv_heads
        scores = q @ k.repeat_interleave(groups, 1).transpose(2, 3) / self.head_dim ** 0.5
        o = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v.repeat_interleave(groups, 1)
        return self.o_proj(o.transpose(1, 2).flatten(2)), {"k": k, "v": v}


class LayerReference(nn.Module):
    def __init__(self, hub, kind):
        super().__init__()
        d, eps = hub["hidden_size"], hub["rms_norm_eps"]
        efficient = hub["efficient_attention_config"]
        if kind == "jet":
            jet = efficient["jet"]
            self.self_attn = JetBlockReference(d, jet["num_heads"], jet["head_dim"], jet["expand_v"],
                                               jet["conv_size"], jet["dconv_generator_reduction"],
                                               float(jet["norm_eps"]))
        else:
            self.self_attn = AttentionReference(hub, efficient["swa"]["window_size"] if kind == "swa" else None)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(d, hub["intermediate_size"], bias=False)
        self.mlp.up_proj = nn.Linear(d, hub["intermediate_size"], bias=False)
        self.mlp.down_proj = nn.Linear(hub["intermediate_size"], d, bias=False)
        self.input_layernorm, self.post_attention_layernorm = RMSNormReference(d, eps), RMSNormReference(d, eps)
        self.kind = kind

    def forward(self, h, positions, cache):
        x = self.input_layernorm(h)
        y, cache = self.self_attn(x, cache) if self.kind == "jet" else self.self_attn(x, positions, cache)
        h = h + y
        x = self.post_attention_layernorm(h)
        return h + self.mlp.down_proj(F.silu(self.mlp.gate_proj(x)) * self.mlp.up_proj(x)), cache


class JetNemotronReference(nn.Module):
    """`JetNemotronForCausalLM` (tied embeddings): parameter names are the checkpoint's."""

    def __init__(self, hub):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(hub["vocab_size"], hub["hidden_size"])
        self.model.layers = nn.ModuleList(LayerReference(hub, kind) for kind in hub["layer_types"])
        self.model.norm = RMSNormReference(hub["hidden_size"], hub["rms_norm_eps"])

    def forward(self, ids, cache=None):
        """ids [B, T] -> (logits [B, T, V], cache: per layer its state / keys and values, and the length)."""
        start = 0 if cache is None else cache["length"]
        positions = torch.arange(start, start + ids.shape[1])
        h, layers = self.model.embed_tokens(ids), []
        for i, layer in enumerate(self.model.layers):
            h, layer_cache = layer(h, positions, None if cache is None else cache["layers"][i])
            layers.append(layer_cache)
        logits = self.model.norm(h) @ self.model.embed_tokens.weight.T
        return logits, {"layers": layers, "length": start + ids.shape[1]}


def save_tiny(path):
    """A random tiny reference (1-D parameters perturbed from their initial values), written as
    model.safetensors + config.json in the checkpoint's key names; returns it."""
    torch.manual_seed(0)
    reference = JetNemotronReference(TINY).eval()
    with torch.no_grad():
        for _, p in reference.named_parameters():
            if p.ndim == 1:   # norms, biases, A_log, dt_bias
                p.add_(0.3 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, f"{path}/model.safetensors",
              metadata={"format": "pt"})
    with open(f"{path}/config.json", "w") as f:
        json.dump(TINY, f)
    return reference


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("jet_nemotron"))
    reference = save_tiny(path)
    return reference, hf.from_pretrained(path), path


def tokens(batch=2):
    return np.random.default_rng(0).integers(0, VOCAB, (batch, STEPS))


def rel(got, want):
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def test_logits_and_states_match_the_reference(pair):
    reference, model, _ = pair
    assert model.config.pattern == "JAJAJ" and model.config.layer_windows == (0, 0, 0, 5, 0)
    x = tokens()
    with torch.no_grad():
        want, cache = reference(torch.tensor(x))
    got, state = jax.jit(lambda m, t: m(t, window=None))(model, jnp.asarray(x))
    diff = float(np.abs(np.asarray(got) - want.numpy()).max())
    assert diff < 1e-4, diff
    for i in (0, 2, 4):
        want_state = cache["layers"][i]
        assert rel(state[f"layer{i}"]["S"], want_state["S"].numpy()) < 1e-4
        # the published cache keeps the last W value inputs [B, C, W]; ours the W-1 the next token reads
        assert rel(state[f"layer{i}"]["conv"], want_state["conv"].numpy()[:, :, 1:].transpose(0, 2, 1)) < 1e-4


def reference_greedy(reference, prompt, new_tokens):
    """Prefill, then one token at a time through the reference's cache (`_step_naive` for the conv)."""
    with torch.no_grad():
        logits, cache = reference(torch.tensor(prompt))
        out = [logits[:, -1].argmax(-1)]
        for _ in range(new_tokens - 1):
            logits, cache = reference(out[-1][:, None], cache)
            out.append(logits[:, -1].argmax(-1))
    return torch.stack(out, 1).numpy()


def test_greedy_decode_matches_the_reference(pair):
    reference, model, _ = pair
    x = tokens()
    np.testing.assert_array_equal(greedy(model, jnp.asarray(x), NEW_TOKENS), reference_greedy(reference, x, NEW_TOKENS))


def test_export_round_trips_bit_exact(pair, tmp_path):
    _, model, path = pair
    hf.save_pretrained(model, str(tmp_path), base_config=hf.read_hub_config(path))
    before, after = load_file(f"{path}/model.safetensors"), load_file(f"{tmp_path}/model.safetensors")
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert hf.model_config(hf.read_hub_config(str(tmp_path))) == model.config


def test_jetlm_2b_parameter_count_equals_the_reference():
    with torch.device("meta"):
        want = sum(p.numel() for p in JetNemotronReference(JETLM_2B).parameters())
    model = hf.abstract_model(hf.model_config(JETLM_2B))
    got = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert got == want       # 1,964,806,208
    c = model.config
    assert (c.jet_v_head_dim, c.layer_windows[20], c.pattern[14], c.pattern[19]) == (256, 1152, "A", "A")


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="efficient_attention_config.swa.window_size"):
        hf.model_config({**TINY, "efficient_attention_config": {"jet": TINY["efficient_attention_config"]["jet"]}})
    jet = {**TINY["efficient_attention_config"]["jet"], "expand_v": 1.3}
    with pytest.raises(ValueError, match="efficient_attention_config.jet.expand_v"):
        hf.model_config({**TINY, "efficient_attention_config": {**TINY["efficient_attention_config"], "jet": jet}})
    with pytest.raises(ValueError, match="layer_types has unsupported kinds"):
        hf.model_config({**TINY, "layer_types": ["jet", "mamba", "jet", "swa", "jet"]})


@pytest.mark.parametrize("carry_conv_tail", [False, True])
def test_sleep_one_pass_equals_block_diagonal_forward(pair, carry_conv_tail):
    """Hard eviction, N = 1: the windowed sleep path is the plain forward with a block-diagonal
    causal mask (the JetBlock state carried across windows; its dynamic-conv tail too with
    sleep.carry_conv_tail, else each window's conv starts from zeros)."""
    from sleep_jax.sleep import SleepConfig, sequence_logits
    model = hf.from_pretrained(pair[2], delta_rule_impl="recurrent")
    x = jnp.asarray(tokens()[:, :4 * SLEEP_WINDOW])
    kinds = "CPCP"
    sleep = SleepConfig(passes=1, window=SLEEP_WINDOW, eviction="hard", carry_conv_tail=carry_conv_tail)
    full = jax.jit(lambda m, x: windowed_forward(m, x, window=SLEEP_WINDOW, eviction="hard",
                                                 carry_conv_tail=carry_conv_tail))(model, x)
    windowed = jax.jit(lambda m, x: sequence_logits(m, x, sleep=sleep, kinds=kinds))(model, x)
    for w, kind in enumerate(kinds):
        if kind == "P":
            span = slice(w * SLEEP_WINDOW, (w + 1) * SLEEP_WINDOW)
            np.testing.assert_allclose(np.asarray(windowed[:, span]), np.asarray(full[:, span]), atol=1e-5)


def test_looped_middle_segment_sleeps_two_passes_with_gradients(pair):
    """The 2B model loops its middle blocks; here (1, 4) of 5: attention, JetBlock, sliding window."""
    from sleep_jax.sleep import SleepConfig, sequence_loss
    model = hf.from_pretrained(pair[2], loop=(1, 4), delta_rule_impl="recurrent")
    graphdef, params = nnx.split(model)
    x = jnp.asarray(tokens()[:, :3 * SLEEP_WINDOW])
    mask = jnp.zeros(x.shape).at[:, 2 * SLEEP_WINDOW:].set(1.0)

    def loss(params):
        sleep = SleepConfig(passes=2, window=SLEEP_WINDOW, eviction="hard")
        return sequence_loss(nnx.merge(graphdef, params), x, mask, sleep=sleep, kinds="CCP")[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    for name in ("w_q", "w_gen1", "w_gen2"):
        g = grads["blocks"][2]["mixer"][name][...]
        assert np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) > 0, name


def test_convert_makes_a_run_directory_that_exports_bit_exact(pair, tmp_path):
    _, _, path = pair
    config = convert.import_checkpoint(path, str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "model.json").read_text())["pattern"] == config.pattern == "JAJAJ"
    convert.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "back"))
    before, after = load_file(f"{path}/model.safetensors"), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    for a, b in zip(*(jax.tree.leaves(nnx.state(m, nnx.Param)) for m in
                      (convert.load_run(str(tmp_path / "run")), hf.from_pretrained(path)))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_engine_sleeps_the_jetblock_state_as_training_does(pair):
    """The streaming engine (N = 2, looped middle segment) gives the training path's logits and
    greedy tokens: the JetBlock state crosses windows and passes as a GDN block's does."""
    from sleep_jax.infer import Engine
    from sleep_jax.sleep import SleepConfig, sequence_logits
    window = 4
    model = hf.from_pretrained(pair[2], loop=(1, 4), delta_rule_impl="recurrent")
    sleep = SleepConfig(passes=2, window=window, eviction="hard")
    prompt = tokens(1)[:, :10]
    engine = Engine(model, sleep, slots=1)
    first = engine.prefill(0, prompt[0])
    new = engine.generate([0], 6)
    stream = jnp.asarray(np.concatenate([prompt, new], axis=1))                 # 16 tokens, 4 windows
    logits = jax.jit(lambda m, x, kinds: sequence_logits(m, x, sleep=sleep, kinds=kinds), static_argnums=2)
    third, fourth = logits(model, stream[:, :12], "CCP"), logits(model, stream, "CCCP")
    np.testing.assert_allclose(first, third[0, 9], atol=1e-5, rtol=0)
    want = np.concatenate([third[0, 9:12].argmax(-1), fourth[0, 12:15].argmax(-1)])
    np.testing.assert_array_equal(new[0], want)
