import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.axes import LOGICAL_AXES, logical_axes
from sleep_jax.model import HybridModel, ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=13, d_model=16, pattern="AGAG", attn_heads=2, attn_kv_heads=1, attn_head_dim=8,
                  gdn_heads=1, gdn_v_heads=2, gdn_head_dim=8, gdn_v_head_dim=4, mlp_hidden=32,
                  delta_rule_impl="recurrent", chunk_size=16)
    return ModelConfig(**{**fields, **overrides})


def tokens(batch, steps, vocab=13, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, steps), 0, vocab, dtype=jnp.int32)


@pytest.mark.parametrize("field, value, message", [
    ("pattern", "AXG", "model.pattern"),
    ("pattern", "", "model.pattern"),
    ("loop", (2, 2), "model.loop"),
    ("loop", (0, 5), "model.loop"),
    ("attn_kv_heads", 3, "model.attn_kv_heads"),
    ("gdn_heads", 3, "model.gdn_heads"),
    ("delta_rule_impl", "fast", "model.delta_rule_impl"),
    ("dtype", "float64", "model.dtype"),
    ("d_model", 0, "model.d_model"),
    ("norm_style", "centred", "model.norm_style"),
    ("qk_norm", "both", "model.qk_norm"),
    ("rotary_fraction", 0.3, "model.rotary_fraction"),
    ("nope_layers", (4,), "model.nope_layers"),
    ("layer_windows", (8,), "model.layer_windows"),
    ("moe_layers", (0,), "model.moe_layers"),
])
def test_config_rejects_bad_fields(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{field: value})


def test_config_loop_list_becomes_tuple_and_groups():
    config = tiny_config(pattern="GAGAG", loop=[1, 4])
    assert config.loop == (1, 4)
    assert config.layer_groups == (range(0, 1), range(1, 4), range(4, 5))
    assert tiny_config().layer_groups == (range(0, 0), range(0, 4), range(4, 4))


@pytest.mark.parametrize("tie", [True, False])
def test_every_param_has_logical_axes(tie):
    model = HybridModel(tiny_config(tie_embeddings=tie, attn_output_gate=True, qk_norm=True), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(leaves) > 20
    for variable in leaves:
        axes = logical_axes(variable)
        assert len(axes) == variable[...].ndim
        assert all(a is None or a in LOGICAL_AXES for a in axes)
    assert (model.lm_head is None) == tie


def test_state_and_kv_pytrees():
    model = HybridModel(tiny_config(), rngs=nnx.Rngs(0))
    state = model.init_state(3)
    assert sorted(state) == ["layer1", "layer3"]
    assert state["layer1"]["S"].shape == (3, 2, 8, 4) and state["layer1"]["S"].dtype == jnp.float32
    assert state["layer1"]["conv"].shape == (3, 3, 2 * 8 + 2 * 4)
    assert sorted(model.init_kv(3, 5)) == ["layer0", "layer2"]
    assert model.init_kv(3, 5)["layer0"]["k"].shape == (3, 5, 1, 8)


def test_forward_split_in_two_with_carried_state_equals_whole():
    model = HybridModel(tiny_config(), rngs=nnx.Rngs(0))
    x = tokens(2, 12)
    forward = jax.jit(lambda x, state, positions: model(x, state=state, positions=positions, window=6))
    whole, final = forward(x, model.init_state(2), jnp.arange(12))
    first, state = forward(x[:, :6], model.init_state(2), jnp.arange(6))
    second, state = forward(x[:, 6:], state, jnp.arange(6, 12))
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(final)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_decode_step_by_step_equals_full_forward(eviction):
    model = HybridModel(tiny_config(attn_output_gate=True, qk_norm=True, tie_embeddings=False), rngs=nnx.Rngs(1))
    x = tokens(2, 10, seed=3)
    window = 4
    full, final = jax.jit(lambda x: model(x, window=window, eviction=eviction))(x)
    step = jax.jit(lambda t, p, s, c: model.decode_step(t, p, s, c, window=window, eviction=eviction))
    state, cache = model.init_state(2), model.init_cache(2, window)
    logits = []
    for position in range(x.shape[1]):
        out, state, cache = step(x[:, position], position, state, cache)
        logits.append(out)
    np.testing.assert_allclose(jnp.stack(logits, axis=1), full, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(final)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_forward_is_pure_under_split_and_merge():
    model = HybridModel(tiny_config(), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    x = tokens(2, 8)

    @jax.jit
    def forward(params, x):
        return nnx.merge(graphdef, params)(x)[0]

    np.testing.assert_allclose(forward(params, x), jax.jit(lambda x: model(x)[0])(x), atol=1e-6)


def test_bfloat16_compute_keeps_float32_state():
    model = HybridModel(tiny_config(dtype="bfloat16"), rngs=nnx.Rngs(0))
    logits, state = jax.jit(model)(tokens(1, 8))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert state["layer1"]["S"].dtype == jnp.float32 and state["layer1"]["conv"].dtype == jnp.bfloat16


def test_decode_step_rejects_a_cache_shorter_than_the_window():
    model = HybridModel(tiny_config(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="cache capacity"):
        model.decode_step(tokens(1, 1)[:, 0], 0, model.init_state(1), model.init_cache(1, 3), window=4)


def test_per_layer_options_build_and_decode_like_the_forward():
    """Post-norm attention, zero-centred norms, full-width q/k norm, partial rotary, a NoPE layer,
    a layer-own sliding window, an MLP-free layer and a MoE layer: the one-token decode path
    still equals the whole-sequence forward."""
    config = tiny_config(pattern=["O", "G", "A", "G"], norm_style="zero_centred", qk_norm="full", attn_bias=True,
                         rotary_fraction=0.5, nope_layers=(2,), layer_windows=(3, 0, 0, 0), no_mlp_layers=(1,),
                         moe_layers=(3,), moe_experts=3, moe_top_k=2, moe_hidden=8, moe_shared_hidden=8)
    assert config.pattern == "OGAG"
    model = HybridModel(config, rngs=nnx.Rngs(2))
    x = tokens(2, 6)
    full, _ = jax.jit(lambda m, x: m(x, window=None))(model, x)
    step = jax.jit(lambda m, token, t, state, cache: m.decode_step(token, t, state, cache, window=None))
    state, cache = model.init_state(2), model.init_cache(2, 6)
    for t in range(6):
        logits, state, cache = step(model, x[:, t], t, state, cache)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
