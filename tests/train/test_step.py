"""The sharded train step: 8 simulated CPU devices (data 2, fsdp 2, tensor 2) vs one device,
on the real hybrid model with two sleep passes (and with the Pallas delta rule, which the step runs
inside a shard_map)."""
import dataclasses

import chex
import jax
import pytest
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from sleep_jax.layers.common import make_param
from sleep_jax.model import HybridModel, ModelConfig
from sleep_jax.numerics import rel_rms
from sleep_jax.parallel import make_mesh
from sleep_jax.sleep import SleepConfig
from sleep_jax.train.config import TrainConfig
from sleep_jax.train.optimizer import make_optimizer
from sleep_jax.train.step import init_train_state, make_train_step, model_loss_fn

TRAIN = TrainConfig(steps=10, warmup_steps=1, schedule="cosine", final_lr_fraction=0.1,
                    muon_lr=2e-3, adamw_lr=5e-5, weight_decay=0.01, grad_clip=1.0)
MODEL = ModelConfig(vocab_size=8, d_model=16, pattern="AG", attn_heads=2, attn_kv_heads=2,
                    attn_head_dim=8, gdn_heads=2, gdn_v_heads=2, gdn_head_dim=8, gdn_v_head_dim=8,
                    mlp_hidden=32, chunk_size=16, delta_rule_impl="recurrent")
SLEEP = SleepConfig(passes=2, window=4, eviction="hard", remat="none", truncate_passes=0)
KINDS = "CCP"


def make_batches(steps=2, batch=8):
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps):
        mask = np.zeros((batch, 12), np.int32)
        mask[:, 8:11] = 1  # scored positions only in the prediction window
        batches.append({"tokens": rng.integers(0, 8, (batch, 12), dtype=np.int32), "loss_mask": mask})
    return batches


def run_steps(mesh, batches, model=MODEL):
    optimizer = make_optimizer(TRAIN)
    graphdef = nnx.graphdef(HybridModel(model, rngs=nnx.Rngs(0)))
    state, shardings = init_train_state(
        lambda: nnx.split(HybridModel(model, rngs=nnx.Rngs(0)))[1], optimizer, mesh)
    step = make_train_step(model_loss_fn(graphdef, sleep=SLEEP, kinds=KINDS), optimizer, mesh,
                           shardings)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, state["params"]), state


@pytest.mark.parametrize("impl", ["recurrent", "pallas"])
def test_sharded_step_matches_single_device(impl):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    model = dataclasses.replace(MODEL, delta_rule_impl=impl)
    batches = make_batches()
    one = run_steps(make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]), batches, model)
    many = run_steps(make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), batches, model)
    (one_losses, one_params, _), (many_losses, many_params, state) = one, many
    # The state really is sharded: an MLP weight over fsdp x tensor, its Muon momentum too.
    up = state["params"]["blocks"][0]["mlp"]["w_up"].get_value()
    assert up.sharding.spec == P("fsdp", "tensor")
    assert len(up.addressable_shards) == 8 and up.addressable_shards[0].data.shape == (8, 16)
    np.testing.assert_allclose(many_losses, one_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one_params), jax.tree.leaves(many_params)):
        assert rel_rms(b, a) <= 1e-5
    # Two steps of Muon/AdamW moved every parameter.
    init = jax.tree.map(np.asarray, nnx.split(HybridModel(model, rngs=nnx.Rngs(0)))[1])
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(many_params)):
        assert not np.array_equal(a, b)


def test_a_non_finite_step_is_not_applied_and_is_remembered():
    """The divergence guard: from the first non-finite loss on, the state stays the last good one
    and ``diverged_at_step`` names that step, even when later steps are finite again."""
    import jax.numpy as jnp
    import optax

    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    optimizer = optax.chain(optax.multi_transform({"muon": optimizer, "adamw": optimizer},
                                                  lambda p: jax.tree.map(lambda _: "adamw", p)))

    def create_params():
        return nnx.State({"w": make_param(jnp.ones((4, 2)), ("embed", "mlp"))})

    def loss_fn(params, batch):
        loss = jnp.mean((batch["x"] @ params["w"].get_value()) ** 2)
        return loss, {}

    state, shardings = init_train_state(create_params, optimizer, mesh)
    step = make_train_step(loss_fn, optimizer, mesh, shardings)
    good = {"x": np.ones((2, 4), np.float32)}
    bad = {"x": np.full((2, 4), np.nan, np.float32)}
    state, _ = step(state, good)
    after_one = jax.tree.map(np.asarray, state)
    for batch in (bad, good):
        state, metrics = step(state, batch)
    assert (int(state["step"]), int(state["diverged_at_step"])) == (1, 2)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, state["params"]), after_one["params"])
    assert np.isfinite(float(metrics["loss"])) and float(metrics["lr_adamw"]) == pytest.approx(0.1)
