"""Parity of imported hub models with transformers (tiny random models built here), export round
trips, and full-size parameter counts. Needs torch and transformers (the `test` extra)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from sleep_jax import hf
from sleep_jax.windows import Span
from tests.windowed import windowed_forward

STEPS, NEW_TOKENS, VOCAB = 150, 16, 97


def tiny_qwen3_5():
    return transformers.Qwen3_5TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=8, linear_conv_kernel_dim=4, tie_word_embeddings=False,
        layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"])


def tiny_olmo_hybrid():
    """Value head dim twice the key head dim, as OLMo-Hybrid's default: the q/k/v conv channels
    (16, 16, 64) are not the equal chunks (32 each) transformers' own save cuts its fused conv into."""
    return transformers.OlmoHybridConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
        linear_value_head_dim=16, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"])


def tiny_qwen3_next():
    return transformers.Qwen3NextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=8, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=48, mlp_only_layers=[2],
        layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"])


TINY = {"qwen3_5_text": (tiny_qwen3_5, transformers.Qwen3_5ForCausalLM),
        "qwen3_next": (tiny_qwen3_next, transformers.Qwen3NextForCausalLM),
        "olmo_hybrid": (tiny_olmo_hybrid, transformers.OlmoHybridForCausalLM)}


def qwen3_5_0_8b():
    """The text config of Qwen/Qwen3.5-0.8B, the smallest Qwen3.5 (its config.json, written out:
    hub files are not reachable from CI); layer i is full attention iff (i + 1) % 4 == 0."""
    return transformers.Qwen3_5TextConfig(
        vocab_size=248320, hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
        num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
        linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
        linear_conv_kernel_dim=4, tie_word_embeddings=True, full_attention_interval=4)


# Published architectures: the smallest Qwen3.5 (0.8B), and transformers' default configs of
# OLMo-Hybrid (7.43 B) and Qwen3-Next (80B-A3B, 79.7 B), as hub config.json files are not
# reachable from CI.
FULL = {"qwen3_5_text": (qwen3_5_0_8b, transformers.Qwen3_5ForCausalLM),
        "qwen3_next": (transformers.Qwen3NextConfig, transformers.Qwen3NextForCausalLM),
        "olmo_hybrid": (transformers.OlmoHybridConfig, transformers.OlmoHybridForCausalLM)}


def save_tiny(model_type, path):
    """A tiny random transformers model of `model_type`, its norm weights, gates and decays
    perturbed away from their initial values, saved in `path`; returns the model."""
    make_config, cls = TINY[model_type]
    torch.manual_seed(0)
    reference = cls(make_config()).eval()
    with torch.no_grad():
        for _, p in reference.named_parameters():
            if p.ndim == 1:   # norms, A_log, dt_bias
                p.add_(0.3 * torch.randn_like(p))
    reference.save_pretrained(path)
    return reference


@pytest.fixture(scope="module", params=sorted(TINY))
def pair(request, tmp_path_factory):
    """(transformers model, our imported model, checkpoint dir) for each family's tiny model."""
    path = str(tmp_path_factory.mktemp(request.param))
    reference = save_tiny(request.param, path)
    return reference, hf.from_pretrained(path), path


def tokens(batch=2):
    return np.random.default_rng(0).integers(0, VOCAB, (batch, STEPS))


def test_logits_and_states_match_transformers(pair):
    reference, model, _ = pair
    x = tokens()
    with torch.no_grad():
        out = reference(torch.tensor(x), use_cache=True)
    ours, state = jax.jit(lambda m, t: m(t, window=None))(model, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), out.logits.numpy(), rtol=0, atol=1e-4)
    cache = out.past_key_values
    for name in model.stateful_layers():
        index = int(name.removeprefix("layer"))
        want_s = cache.get_recurrent_state(index).numpy()           # [B, HV, K, V]
        want_conv = cache.get_conv_state(index).numpy()[:, :, 1:]   # [B, C, W]: the last W inputs
        for got, want in ((state[name]["S"], want_s), (state[name]["conv"], want_conv.transpose(0, 2, 1))):
            rel = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
            assert rel < 1e-4, (name, rel)


def greedy(model, prompt, new_tokens):
    """Greedy continuation: prefill with the plain forward, then `decode_step` token by token."""
    batch, steps = prompt.shape
    positions = jnp.arange(steps, dtype=jnp.int32)
    prefill = jax.jit(lambda m, t: m.apply_blocks(m.embed(t), Span(positions), m.init_state(batch),
                                                  range(len(m.blocks))))
    hidden, state, kv = prefill(model, prompt)
    cache = model.init_cache(batch, steps + new_tokens)
    cache["positions"] = cache["positions"].at[:, :steps].set(positions)  # [B, C]: one ring buffer per row
    cache["layers"] = {name: {key: cache["layers"][name][key].at[:, :steps].set(kv[name][key]) for key in kv[name]}
                       for name in cache["layers"]}
    token = jnp.argmax(model.logits(hidden[:, -1]), axis=-1)
    step = jax.jit(lambda m, t, p, s, c: m.decode_step(t, p, s, c, window=None))
    out = [token]
    for i in range(new_tokens - 1):
        logits, state, cache = step(model, token, steps + i, state, cache)
        token = jnp.argmax(logits, axis=-1)
        out.append(token)
    return np.stack([np.asarray(t) for t in out], axis=1)


def reference_greedy(reference, prompt, new_tokens):
    """Greedy continuation by transformers: prefill, then one token at a time through its cache.

    (Not `generate`: on these tiny models its continuation departs from the model's own forward
    over the same tokens, by ~1e-2 in the logits, where this loop and our decode agree to 1e-7.)
    """
    with torch.no_grad():
        out = reference(torch.tensor(prompt), use_cache=True)
        tokens = [out.logits[:, -1].argmax(-1)]
        for _ in range(new_tokens - 1):
            out = reference(tokens[-1][:, None], past_key_values=out.past_key_values, use_cache=True)
            tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, 1).numpy()


def test_greedy_decode_matches_transformers(pair):
    reference, model, _ = pair
    x = tokens()
    np.testing.assert_array_equal(greedy(model, jnp.asarray(x), NEW_TOKENS), reference_greedy(reference, x, NEW_TOKENS))


def test_export_reloads_bit_exact_in_transformers(pair, tmp_path):
    from safetensors.numpy import load_file
    reference, model, path = pair
    hf.save_pretrained(model, str(tmp_path), base_config=hf.read_hub_config(path))
    reloaded = type(reference).from_pretrained(str(tmp_path), dtype=torch.float32)
    want, got = reference.state_dict(), reloaded.state_dict()
    assert sorted(want) == sorted(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    if model.config.hf_model_type == "olmo_hybrid":   # transformers' save: equal chunks; ours: the q/k/v split
        conv = "model.layers.0.linear_attn.{}_conv1d.weight"
        saved, exported = (load_file(f"{d}/model.safetensors") for d in (path, tmp_path))
        assert [saved[conv.format(x)].shape[0] for x in "qkv"] == [32, 32, 32]
        assert [exported[conv.format(x)].shape[0] for x in "qkv"] == [16, 16, 64]


def test_export_of_a_model_its_format_cannot_hold_names_the_layer_or_field():
    """A block kind the family has not (a JetBlock inserted into Qwen3.5) names the layer and
    the kind; an architecture field the hub config cannot state names the field. MLP-free
    inserted blocks are held (zero MLPs: test_finetune exports one through transformers)."""
    import dataclasses

    from sleep_jax.hf.families import exportable
    from sleep_jax.hf.insert import inserted_config
    config = hf.model_config(tiny_qwen3_5().to_dict())
    with pytest.raises(ValueError, match=r"^qwen3_5_text: layer 1 is a 'J' block \(JetMixer, pre-norm\); the "
                                         r"qwen3_5_text hub format holds only 'A', 'G' layers"):
        exportable(inserted_config(config, (1,), "J"))
    with pytest.raises(ValueError, match=r"^qwen3_5_text: model\.qk_norm='full' has no form in the qwen3_5_text "
                                         r"hub format \(it reads back as 'head'"):
        exportable(dataclasses.replace(config, qk_norm="full"))
    assert exportable(inserted_config(config, (1,), "G")) is exportable(config)
    with pytest.raises(ValueError, match=r"^model\.hf_model_type is None: a model trained from scratch"):
        exportable(dataclasses.replace(config, hf_model_type=None))


def test_bad_checkpoints_name_the_key_and_shapes(pair, tmp_path):
    from safetensors.numpy import load_file, save_file
    _, model, path = pair
    tensors = load_file(f"{path}/model.safetensors")
    key = "model.embed_tokens.weight"
    for name, broken, message in (
            ("missing", {k: v for k, v in tensors.items() if k != key}, f"missing tensor '{key}'"),
            ("extra", {**tensors, "model.extra.weight": np.zeros(2, np.float32)}, "'model.extra.weight'"),
            ("shape", {**tensors, key: tensors[key][:5]}, f"'{key}' has shape (5, 64), the model needs (97, 64)")):
        (tmp_path / name).mkdir()
        save_file(broken, str(tmp_path / name / "model.safetensors"))
        (tmp_path / name / "config.json").write_text(open(f"{path}/config.json").read())
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            hf.from_pretrained(str(tmp_path / name))
    with pytest.raises(ValueError, match="supported: .*qwen3_5_text"):
        hf.model_config({"model_type": "llama"})


@pytest.mark.parametrize("model_type", sorted(FULL))
def test_full_size_parameter_count_equals_transformers(model_type):
    make_config, cls = FULL[model_type]
    hub_config = make_config()
    with torch.device("meta"):
        want = sum(p.numel() for p in cls(hub_config).parameters())
    model = hf.abstract_model(hf.model_config(hub_config.to_dict()))
    got = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert got == want


SLEEP_WINDOW = 8


@pytest.mark.parametrize("carry_conv_tail", [False, True])
def test_sleep_one_pass_equals_block_diagonal_forward(pair, carry_conv_tail):
    """Hard eviction, N = 1 on an imported model: the windowed sleep path is the plain forward
    with a block-diagonal causal mask (GDN state carried across windows; the conv tail too with
    sleep.carry_conv_tail, else each window's conv starts from zeros)."""
    from sleep_jax.sleep import SleepConfig, sequence_logits
    model = hf.from_pretrained(pair[2], delta_rule_impl="recurrent")   # 8-token windows: a scan beats chunks
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


def test_looped_middle_segment_sleeps_two_passes_with_gradients(tmp_path):
    """`model.loop` over the middle layers of an imported model: N = 2 runs, with finite, non-zero
    gradients into a looped GDN layer. (One family: the sleep code does not depend on it, and
    this compile is the slowest test here; OLMo-Hybrid has the most block kinds.)"""
    from sleep_jax.sleep import SleepConfig, sequence_loss
    path = str(tmp_path)
    save_tiny("olmo_hybrid", path)
    model = hf.from_pretrained(path, loop=(1, 3), delta_rule_impl="recurrent")
    graphdef, params = nnx.split(model)
    x = jnp.asarray(tokens()[:, :3 * SLEEP_WINDOW])
    mask = jnp.zeros(x.shape).at[:, 2 * SLEEP_WINDOW:].set(1.0)

    def loss(params):
        sleep = SleepConfig(passes=2, window=SLEEP_WINDOW, eviction="hard")
        return sequence_loss(nnx.merge(graphdef, params), x, mask, sleep=sleep, kinds="CCP")[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    looped_gdn = grads["blocks"][2]["mixer"]["w_q"][...]
    assert np.all(np.isfinite(looped_gdn)) and float(jnp.max(jnp.abs(looped_gdn))) > 0
