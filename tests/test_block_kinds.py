"""Every registered block kind through the same invariants (a new kind in `layers.KINDS` gets them
for free): on a tiny stack mixing it with attention,

  (a) the span form equals reading token by token (`decode_step`);
  (b) sleep with N = 1 equals the ordinary windowed forward (conv tails carried across windows or
      not, `sleep.carry_conv_tail`);
  (c) the engine's logits equal the training path's at N = 2, hard and sliding eviction;
  (d) the gradient through N = 2 passes is finite and reaches the kind's mixer;
  (e) every hub family that holds the kind exports and re-imports it bit-exactly, and every family
      that does not refuses it in one line naming the layer and the kind.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax import hf
from sleep_jax.hf.families import FAMILIES
from sleep_jax.infer import Engine
from sleep_jax.layers import KINDS
from sleep_jax.model import HybridModel, ModelConfig
from sleep_jax.sleep import SleepConfig, sequence_logits, sequence_loss
from tests.windowed import windowed_forward

WINDOW, VOCAB = 4, 13
SIZES = dict(vocab_size=VOCAB, d_model=16, attn_heads=2, attn_kv_heads=1, attn_head_dim=8, gdn_heads=1,
             gdn_v_heads=2, gdn_head_dim=8, gdn_v_head_dim=4, jet_heads=2, jet_head_dim=8, jet_v_head_dim=8,
             jet_generator_reduction=4, mlp_hidden=32, delta_rule_impl="recurrent", chunk_size=16)
# What each hub family's format fixes beyond the pattern (its norms, attention options, ...).
FAMILY_SETTINGS = {
    "qwen3_5_text": dict(attn_output_gate=True, qk_norm="head", norm_style="zero_centred"),
    "qwen3_next": dict(attn_output_gate=True, qk_norm="head", norm_style="zero_centred"),
    "olmo_hybrid": dict(qk_norm="full", gdn_beta_scale=2.0, gdn_norm_eps=1e-5),
    "jet_nemotron": dict(attn_bias=True),
    "ouro": dict(ut_steps=2, exit_gate=True),
}


def stack(kind: str) -> str:
    """The kind beside attention; an attention kind beside a GDN block (so there is state to sleep on)."""
    return "A" + kind if KINDS[kind].mixer.has_state else kind + "G"


def tiny_model(kind: str) -> HybridModel:
    return HybridModel(ModelConfig(pattern=stack(kind), **SIZES), rngs=nnx.Rngs(0))


def stream(steps: int, seed: int = 0) -> np.ndarray:
    return np.asarray(jax.random.randint(jax.random.key(seed), (2, steps), 0, VOCAB), np.int32)


@pytest.mark.parametrize("kind", list(KINDS))
def test_span_equals_token_by_token(kind):
    model = tiny_model(kind)
    x = jnp.asarray(stream(7))
    whole = jax.jit(lambda x: model(x)[0])(x)
    step = jax.jit(lambda t, p, s, c: model.decode_step(t, p, s, c, window=None))
    state, cache = model.init_state(2), model.init_cache(2, 7)
    for t in range(7):
        logits, state, cache = step(x[:, t], t, state, cache)
        np.testing.assert_allclose(logits, whole[:, t], atol=1e-5, rtol=0, err_msg=f"position {t}")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("eviction, carry_conv_tail", [("hard", False), ("sliding", True)])
def test_sleep_with_one_pass_is_the_windowed_forward(kind, eviction, carry_conv_tail):
    model = tiny_model(kind)
    x = jnp.asarray(stream(3 * WINDOW, seed=1))
    sleep = SleepConfig(passes=1, window=WINDOW, eviction=eviction, carry_conv_tail=carry_conv_tail)
    full = jax.jit(lambda x: windowed_forward(model, x, window=WINDOW, eviction=eviction,
                                              carry_conv_tail=carry_conv_tail))(x)
    slept = jax.jit(lambda x: sequence_logits(model, x, sleep=sleep, kinds="CCP"))(x)
    np.testing.assert_allclose(slept[:, 2 * WINDOW:], full[:, 2 * WINDOW:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_engine_equals_the_training_path(kind, eviction):
    """A slot prefills 6 tokens (window 0 whole: straight to sleep; then 2 wake steps) and generates
    6 greedily (window 1 fills at 8 and sleeps). The logits of window 2 equal the training path's
    ("CCP"), and each generated token is the argmax of the training path's logits."""
    model = tiny_model(kind)
    sleep = SleepConfig(passes=2, window=WINDOW, eviction=eviction)
    engine = Engine(model, sleep, slots=1)
    prompt = stream(6, seed=2)[0]
    seen = {5: engine.prefill(0, prompt)}
    generated = []
    for position in range(6, 12):
        generated.append(int(engine.generate([0], 1)[0, 0]))
        seen[position] = engine.logits(0)
    assert engine.stats["sleeps"] == 3
    tokens = np.concatenate([prompt, generated])[None]
    reference = np.asarray(jax.jit(lambda x: sequence_logits(model, x, sleep=sleep, kinds="CCP"))(tokens))[0]
    for position in range(2 * WINDOW, 3 * WINDOW):
        np.testing.assert_allclose(seen[position], reference[position], atol=1e-5, rtol=0,
                                   err_msg=f"position {position}")
    for position in range(2 * WINDOW, 3 * WINDOW - 1):
        assert tokens[0, position + 1] == reference[position].argmax()


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradient_through_two_passes_is_finite_and_reaches_the_mixer(kind):
    model = tiny_model(kind)
    graphdef, params = nnx.split(model, nnx.Param)
    x = jnp.asarray(stream(2 * WINDOW, seed=3))
    mask = jnp.concatenate([jnp.zeros((2, WINDOW)), jnp.ones((2, WINDOW))], axis=1)
    sleep = SleepConfig(passes=2, window=WINDOW)
    loss = lambda params: sequence_loss(nnx.merge(graphdef, params), x, mask, sleep=sleep, kinds="CP")[0]
    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    layer = stack(kind).index(kind)
    mixer = jax.tree.leaves(grads["blocks"][layer]["mixer"])
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in mixer)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_hub_export_is_bit_exact_or_names_the_layer(kind, model_type, tmp_path):
    family = FAMILIES[model_type]
    pattern = family.kinds if kind in family.kinds else family.kinds[0] + kind
    config = ModelConfig(pattern=pattern, hf_model_type=model_type, **{**SIZES, **FAMILY_SETTINGS[model_type]})
    model = HybridModel(config, rngs=nnx.Rngs(0))
    if kind not in family.kinds:
        with pytest.raises(ValueError, match=rf"^{model_type}: layer 1 is a '{kind}' block [^\n]*$"):
            hf.save_pretrained(model, str(tmp_path))
        return
    hf.save_pretrained(model, str(tmp_path))
    back = hf.from_pretrained(str(tmp_path), delta_rule_impl="recurrent", chunk_size=16)
    assert back.config.pattern == pattern
    ours, theirs = nnx.to_pure_dict(nnx.state(model, nnx.Param)), nnx.to_pure_dict(nnx.state(back, nnx.Param))
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)),
                 ours, theirs)
