"""Ouro (a looped LM, hub remote code `modeling_ouro.py`) against a short torch reference written
here from the published code: sandwich-norm layers, all layers run `total_ut_steps` times with the
final norm after every step, a KV cache slot per step, the early-exit gate's exit distribution and
its expected logits. Tiny random checkpoints in Ouro's key names are written by the test."""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file
from torch import nn

from sleep_jax import convert, hf
from sleep_jax.hf.insert import insert_blocks
from sleep_jax.sleep import SleepConfig, sequence_logits, sequence_loss
from sleep_jax.windows import Span
from tests.windowed import windowed_forward

VOCAB, STEPS, NEW_TOKENS = 61, 12, 16
TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
            total_ut_steps=3, early_exit_threshold=1.0, hidden_act="silu", max_position_embeddings=128)
# The inserted JetBlocks' shape in the tiny tests
JET = dict(jet_heads=2, jet_head_dim=8, jet_v_head_dim=16, jet_conv_kernel=4, jet_generator_reduction=8)
# Ouro-1.4B's config.json (ByteDance/Ouro-1.4B), written out: hub files are not reachable from CI.
OURO_1_4B = dict(vocab_size=49152, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                 num_attention_heads=16, num_key_value_heads=16, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
                 tie_word_embeddings=False, total_ut_steps=4, early_exit_threshold=1.0, hidden_act="silu",
                 max_position_embeddings=65536)


# ---- the reference (follows modeling_ouro.py, eager attention, no cache) -----------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, kv, dh, f = (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"],
                           c["intermediate_size"])
        self.self_attn = nn.Module()
        for name, shape in (("q_proj", (d, h * dh)), ("k_proj", (d, kv * dh)), ("v_proj", (d, kv * dh)),
                            ("o_proj", (h * dh, d))):
            setattr(self.self_attn, name, nn.Linear(*shape, bias=False))
        self.mlp = nn.Module()
        for name, shape in (("gate_proj", (d, f)), ("up_proj", (d, f)), ("down_proj", (f, d))):
            setattr(self.mlp, name, nn.Linear(*shape, bias=False))
        for name in ("input_layernorm", "input_layernorm_2", "post_attention_layernorm", "post_attention_layernorm_2"):
            setattr(self, name, RMSNorm(d, c["rms_norm_eps"]))
        self.heads, self.kv_heads, self.head_dim = h, kv, dh

    def attention(self, x, cos, sin):
        b, t, _ = x.shape
        a = self.self_attn
        q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k, v = (z.repeat_interleave(self.heads // self.kv_heads, dim=1) for z in (k, v))
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        return a.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1))

    def forward(self, h, cos, sin):
        h = h + self.input_layernorm_2(self.attention(self.input_layernorm(h), cos, sin))
        m = self.mlp
        x = self.post_attention_layernorm(h)
        return h + self.post_attention_layernorm_2(m.down_proj(nn.functional.silu(m.gate_proj(x)) * m.up_proj(x)))


class Ouro(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.model.layers = nn.ModuleList([Layer(c) for _ in range(c["num_hidden_layers"])])
        self.model.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.model.early_exit_gate = nn.Linear(c["hidden_size"], 1)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def forward(self, ids):
        """-> (per-step logits [U, B, T, V], exit pdf [U, B, T])."""
        dh = self.c["head_dim"]
        inv_freq = 1.0 / self.c["rope_theta"] ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh)
        freqs = torch.arange(ids.shape[1], dtype=torch.float32)[:, None] * inv_freq[None]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos(), emb.sin()                          # the same positions for every step
        h = self.model.embed_tokens(ids)
        hiddens, gates = [], []
        for _ in range(self.c["total_ut_steps"]):
            for layer in self.model.layers:
                h = layer(h, cos, sin)
            h = self.model.norm(h)                               # closes the step, feeds the next
            hiddens.append(h)
            gates.append(self.model.early_exit_gate(h).squeeze(-1))
        pdf, remaining = [], torch.ones_like(gates[0])
        for i, gate in enumerate(gates):
            lam = torch.sigmoid(gate)
            pdf.append(lam * remaining if i < len(gates) - 1 else remaining)
            remaining = remaining * (1 - lam)
        return torch.stack([self.lm_head(h) for h in hiddens]), torch.stack(pdf)


def expected_logits(step_logits, pdf):
    return (step_logits * pdf[..., None]).sum(0)


def threshold_logits(step_logits, pdf, threshold):
    reached = pdf.cumsum(0) >= threshold
    step = torch.where(reached.any(0), reached.float().argmax(0), torch.tensor(len(pdf) - 1))
    return torch.gather(step_logits, 0, step[None, ..., None].expand(1, *step_logits.shape[1:]))[0]


def save_tiny(path, config=TINY, seed=0):
    """A tiny random Ouro checkpoint (norms and the gate moved off their init) -> the reference."""
    torch.manual_seed(seed)
    reference = Ouro(config).eval()
    with torch.no_grad():
        for _, p in reference.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"model_type": "ouro", "architectures": ["OuroForCausalLM"],
                                                  **config}))
    return reference


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("ouro")
    reference = save_tiny(path)
    return reference, path


def tokens(batch=2, steps=STEPS, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, steps))


def test_logits_match_the_reference_last_step_expected_and_threshold(tiny):
    reference, path = tiny
    x = tokens()
    with torch.no_grad():
        step_logits, pdf = reference(torch.tensor(x))
    want = {"last": step_logits[-1], "expected": expected_logits(step_logits, pdf),
            "threshold": threshold_logits(step_logits, pdf, 0.4)}
    for exit_rule, logits in want.items():
        model = hf.from_pretrained(str(path), ut_exit=exit_rule, ut_exit_threshold=0.4)
        got = jax.jit(lambda m, t: m(t)[0])(model, jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(got), logits.numpy(), rtol=0, atol=1e-4, err_msg=exit_rule)
    assert 0 < float((pdf.cumsum(0) >= 0.4).float().argmax(0).float().mean()) < 2   # the threshold picks vary
    exits = []
    model.apply_blocks(model.embed(jnp.asarray(x)), Span(jnp.arange(STEPS)), {}, range(len(model.blocks)), exits=exits)
    np.testing.assert_allclose(np.asarray(model.exit_probabilities(exits)), pdf.numpy(), atol=1e-5)


def test_training_loss_is_the_cross_entropy_of_the_expected_logits(tiny):
    reference, path = tiny
    x = tokens()
    with torch.no_grad():
        step_logits, pdf = reference(torch.tensor(x))
        logits = expected_logits(step_logits, pdf)
        want = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), torch.tensor(x[:, 1:]).reshape(-1))
    model = hf.from_pretrained(str(path), ut_exit="expected")
    mask = jnp.ones(x.shape)
    loss, _ = sequence_loss(model, jnp.asarray(x), mask, sleep=SleepConfig(window=STEPS), kinds="P")
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def reference_greedy(reference, prompt, new_tokens):
    """Greedy continuation of the reference: its whole forward over the growing sequence."""
    ids = torch.tensor(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids = torch.cat([ids, reference(ids)[0][-1, :, -1].argmax(-1)[:, None]], 1)
    return ids[:, prompt.shape[1]:].numpy()


def test_greedy_decode_with_a_kv_slot_per_step_matches_the_reference(tiny):
    reference, path = tiny
    model = hf.from_pretrained(str(path))
    prompt = tokens(steps=6, seed=1)
    total = prompt.shape[1] + NEW_TOKENS
    assert len(model.init_cache(2, total)["layers"]) == 2 * 3          # layers x UT steps
    step = jax.jit(lambda m, t, p, s, c: m.decode_step(t, p, s, c, window=None))
    state, cache, out = model.init_state(2), model.init_cache(2, total), []
    token = jnp.asarray(prompt[:, 0])
    for position in range(total - 1):         # the prompt token by token, then the greedy tokens
        logits, state, cache = step(model, token, position, state, cache)
        if position + 1 < prompt.shape[1]:
            token = jnp.asarray(prompt[:, position + 1])
        else:
            token = jnp.argmax(logits, -1)
            out.append(np.asarray(token))
    np.testing.assert_array_equal(np.stack(out, 1), reference_greedy(reference, prompt, NEW_TOKENS))


def test_export_round_trip_is_bit_exact(tiny, tmp_path):
    from safetensors.numpy import load_file
    _, path = tiny
    model = hf.from_pretrained(str(path))
    hf.save_pretrained(model, str(tmp_path), base_config=hf.read_hub_config(str(path)))
    before, after = (load_file(str(p / "model.safetensors")) for p in (path, tmp_path))
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert hf.read_hub_config(str(tmp_path))["total_ut_steps"] == 3


def test_ouro_1_4b_parameter_count_equals_the_reference():
    with torch.device("meta"):
        want = sum(p.numel() for p in Ouro(OURO_1_4B).parameters())
    model = hf.abstract_model(hf.model_config({"model_type": "ouro", **OURO_1_4B}))
    got = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert got == want == 1_434_652_673


@pytest.mark.parametrize("carry_conv_tail", [False, True])
def test_sleep_one_pass_equals_block_diagonal_forward_and_two_passes_train(tiny, carry_conv_tail):
    """Ouro with an inserted MLP-free JetBlock (fast weights to sleep on; its output projection
    moved off zero, as after some training), hard eviction: N = 1 is the plain forward with a
    block-diagonal mask (the JetBlock's conv tail crossing the window boundary or not); the
    all-blocks loop (every layer of every UT step) runs N = 2 with gradients."""
    _, path = tiny
    model = hf.from_pretrained(str(path), delta_rule_impl="recurrent", ut_steps=2, **JET)
    model = insert_blocks(model, (1,), "J")
    w_o = model.blocks[1].mixer.w_o
    w_o.set_value(0.3 * jax.random.normal(jax.random.key(0), w_o.get_value().shape))
    assert model.config.layer_groups[1] == range(0, 6)                  # 3 layers x 2 UT steps, all looped
    window, x = 4, jnp.asarray(tokens(steps=8, seed=2))
    full = jax.jit(lambda m, x: windowed_forward(m, x, window=window, eviction="hard",
                                                 carry_conv_tail=carry_conv_tail))(model, x)
    sleep = SleepConfig(window=window, carry_conv_tail=carry_conv_tail)
    windowed = jax.jit(lambda m, x: sequence_logits(m, x, sleep=sleep, kinds="CP"))(model, x)
    np.testing.assert_allclose(np.asarray(windowed[:, 4:]), np.asarray(full[:, 4:]), atol=1e-5)
    if carry_conv_tail:
        return   # the two passes below, once (the default: only S crosses)

    graphdef, params = nnx.split(model)
    mask = jnp.zeros(x.shape).at[:, 4:].set(1.0)

    def loss(params):
        sleep = SleepConfig(passes=2, window=window)
        return sequence_loss(nnx.merge(graphdef, params), x, mask, sleep=sleep, kinds="CP")[0]

    two, grads = jax.jit(jax.value_and_grad(loss))(params)
    one = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(full[:, 4:7]), x[:, 5:, None], -1))   # N = 1
    assert np.isfinite(float(two)) and abs(float(two) - float(one)) > 1e-4
    grads = nnx.to_pure_dict(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    for block in (0, 1):
        assert float(jnp.abs(grads["blocks"][block]["mixer"]["w_q"]).max()) > 0


def test_convert_makes_a_fine_tunable_run_dir(tiny, tmp_path):
    _, path = tiny
    config = convert.import_checkpoint(str(path), str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "model.json").read_text())["ut_steps"] == config.ut_steps == 3
    loaded, imported = convert.load_run(str(tmp_path / "run")), hf.from_pretrained(str(path))
    x = jnp.asarray(tokens())
    np.testing.assert_array_equal(np.asarray(loaded(x)[0]), np.asarray(imported(x)[0]))


def jetblock_parameters(d, heads, head_dim, v_head_dim, conv, reduction):
    """Parameters of one MLP-free JetBlock (jet_block.py's tensors + the block's input norm)."""
    value = heads * v_head_dim
    return (d + 2 * d * heads * head_dim + 2 * d * value + 2 * d * heads + 2 * heads   # norm, q k, v g, b a, A dt
            + d * value // reduction + value // reduction * value * conv + value * conv   # dynamic-conv generator
            + v_head_dim + value * d)                                                   # o_norm, o_proj


def test_ouro_with_inserted_jetblocks_starts_as_the_pretrained_ouro(tiny):
    """The paper's modification, scaled down: 2 MLP-free JetBlocks in the tiny Ouro (the paper: 6
    in Ouro-1.4B) leave the logits of every UT step unchanged at init."""
    _, path = tiny
    model = hf.from_pretrained(str(path), ut_exit="expected", delta_rule_impl="recurrent", **JET)
    new = insert_blocks(model, (1, 3), "J")
    assert new.config.pattern == "SJSJ" and new.config.no_mlp_layers == (1, 3) and len(new.blocks) == 4 * 3
    x = jnp.asarray(tokens())
    np.testing.assert_array_equal(np.asarray(model(x)[0]), np.asarray(new(x)[0]))
    count = lambda m: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert count(new) - count(model) == 2 * jetblock_parameters(32, 2, 8, 16, 4, 8)


def test_ouro_1_4b_with_six_jetblocks_parameter_count():
    """Six MLP-free JetBlocks of Jet-Nemotron-4B's shape (16 heads x 128, expand_v 2, the width
    2048 Ouro-1.4B shares) add 6 x 43.1 M = 258,455,232 parameters: 18.0 % of Ouro-1.4B."""
    from sleep_jax.hf.insert import inserted_config
    config = hf.model_config({"model_type": "ouro", **OURO_1_4B}, jet_heads=16, jet_head_dim=128,
                             jet_v_head_dim=256, jet_conv_kernel=4, jet_generator_reduction=8)
    count = lambda c: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(hf.abstract_model(c), nnx.Param)))
    inserted = inserted_config(config, (4, 8, 12, 16, 20, 24), "J")
    added = count(inserted) - count(config)
    assert added == 6 * jetblock_parameters(2048, 16, 128, 256, 4, 8) == 258_455_232
    assert round(added / count(config), 3) == 0.180


def test_an_ouro_finetune_may_train_on_the_expected_exit(tiny):
    """`model.ut_exit="expected"` (Ouro's own training loss) with `init.hf_dir`: the run chooses
    its readout; every architecture key still comes from the checkpoint."""
    import runpy

    from sleep_jax.train import stages as stages_lib
    from sleep_jax.train.errors import ConfigError

    _, path = tiny
    config = runpy.run_path(str(pathlib.Path(__file__).parents[2] / "configs" / "gsm_finetune.py"))["get_config"]("tiny")
    config.init.hf_dir = str(path)
    config.model.ut_exit = "expected"
    resolved = stages_lib.resolve(config, need_tokenizer=False)
    assert (resolved.model.ut_exit, resolved.model.exit_gate, resolved.model.ut_steps) == ("expected", True, 3)
    config.model.d_model = 2 * resolved.model.d_model
    with pytest.raises(ConfigError, match=r"^model\.d_model=.*fixes the architecture"):
        stages_lib.resolve(config, need_tokenizer=False)
