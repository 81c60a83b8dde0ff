"""Inserting MLP-free blocks into a model (the paper's modification): identity at init, old
parameters untouched, per-layer options following their layers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.hf.insert import insert_blocks, inserted_config
from sleep_jax.model import HybridModel, ModelConfig
from sleep_jax.sleep import SleepConfig, sequence_logits


def tiny_hybrid(**overrides) -> HybridModel:
    fields = dict(vocab_size=13, d_model=16, pattern="AGAG", attn_heads=2, attn_kv_heads=1, attn_head_dim=8,
                  gdn_heads=1, gdn_v_heads=2, gdn_head_dim=8, gdn_v_head_dim=4, mlp_hidden=32,
                  delta_rule_impl="recurrent", nope_layers=(2,), layer_windows=(0, 0, 3, 0), no_mlp_layers=(3,),
                  loop=(1, 3))
    return HybridModel(ModelConfig(**{**fields, **overrides}), rngs=nnx.Rngs(0))


def test_inserted_blocks_are_the_identity_and_old_parameters_are_bit_identical():
    model = tiny_hybrid()
    new = insert_blocks(model, (1, 4), "G")
    c = new.config
    # old layers 0, 1, 2, 3 -> new 0, 2, 3, 5; new blocks at 1 and 4 join the looped segment
    assert c.pattern == "AGGAGG"
    assert c.nope_layers == (3,) and c.layer_windows == (0, 0, 0, 3, 0, 0)
    assert c.no_mlp_layers == (1, 4, 5) and c.loop == (1, 5)
    assert new.blocks[1].mlp is None and new.blocks[4].mlp is None
    assert not np.any(np.asarray(new.blocks[1].mixer.w_o[...]))

    old_params = dict(nnx.iter_graph(model))
    moved = {0: 0, 2: 1, 3: 2, 5: 3}
    for path, param in nnx.iter_graph(new):
        if not isinstance(param, nnx.Param) or (path[0] == "blocks" and path[1] in (1, 4)):
            continue
        source = old_params[("blocks", moved[path[1]], *path[2:]) if path[0] == "blocks" else path]
        np.testing.assert_array_equal(np.asarray(param[...]), np.asarray(source[...]), err_msg=str(path))
        assert param[...].dtype == source[...].dtype

    x = jax.random.randint(jax.random.key(1), (2, 8), 0, 13)
    forward = jax.jit(lambda m, x: m(x, window=4))
    (before, _), (after, state) = forward(model, x), forward(new, x)
    np.testing.assert_array_equal(before, after)
    # the inserted blocks are live: their fast weights are written from the first token
    assert float(jnp.abs(state["layer1"]["S"]).max()) > 0
    sleep = SleepConfig(passes=2, window=4)
    slept = jax.jit(lambda m, x: sequence_logits(m, x, sleep=sleep, kinds="CP"))
    np.testing.assert_array_equal(slept(model, x), slept(new, x))


def test_inserted_block_with_mlp_and_at_the_ends():
    model = tiny_hybrid(loop=None, layer_windows=())
    new = insert_blocks(model, (0, 5), "A", mlp=True, seed=3)
    assert new.config.pattern == "AAGAGA" and new.config.no_mlp_layers == (4,) and new.config.nope_layers == (3,)
    assert not np.any(np.asarray(new.blocks[5].mlp.w_down[...]))
    x = jax.random.randint(jax.random.key(2), (1, 8), 0, 13)
    forward = jax.jit(lambda m, x: m(x)[0])
    np.testing.assert_array_equal(forward(model, x), forward(new, x))


@pytest.mark.parametrize("positions, kind, message", [((1, 1), "G", "distinct"), ((6,), "G", r"\[0, 5\)"),
                                                      ((0,), "Z", "kind='Z'")])
def test_bad_insertions_are_named(positions, kind, message):
    with pytest.raises(ValueError, match=message):
        inserted_config(tiny_hybrid().config, positions, kind)
