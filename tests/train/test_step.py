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


def uneven_batches(steps=2, batch=16):
    """Rows scoring 0 to 3 tokens of the prediction window, in an order that gives the
    micro-batches of accum_steps 2 and 4 (rows i, i + k, ...) different counts, one of them 0."""
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(steps):
        mask = np.zeros((batch, 12), np.int32)
        for row in range(batch):
            mask[row, 8:8 + row % 4] = 1
        batches.append({"tokens": rng.integers(0, 8, (batch, 12), dtype=np.int32), "loss_mask": mask})
    return batches


def run_accumulated(mesh, batches, accum_steps):
    optimizer = make_optimizer(TRAIN)
    graphdef = nnx.graphdef(HybridModel(MODEL, rngs=nnx.Rngs(0)))
    state, shardings = init_train_state(
        lambda: nnx.split(HybridModel(MODEL, rngs=nnx.Rngs(0)))[1], optimizer, mesh)
    step = make_train_step(model_loss_fn(graphdef, sleep=SLEEP, kinds=KINDS), optimizer, mesh,
                           shardings, accum_steps=accum_steps)
    metrics = []
    for batch in batches:
        state, step_metrics = step(state, batch)
        metrics.append({k: float(v) for k, v in step_metrics.items()})
    return metrics, jax.tree.map(np.asarray, state["params"])


def test_gradient_accumulation_matches_the_whole_batch():
    """accum_steps 4 on the 8-device mesh: the same losses, metrics and new parameters as one pass
    over the batch, with micro-batches scoring different numbers of tokens, one of them none
    (weighted by their share of the scored tokens, not equally)."""
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    batches = uneven_batches()
    counts = batches[0]["loss_mask"].reshape(-1, 4, 12).sum(axis=(0, 2))
    assert len(set(counts.tolist())) == 4 and 0 in counts
    whole_metrics, whole_params = run_accumulated(mesh, batches, 1)
    init = jax.tree.map(np.asarray, nnx.split(HybridModel(MODEL, rngs=nnx.Rngs(0)))[1])
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(whole_params)):
        assert not np.array_equal(a, b)   # the second step's update moved every parameter
    metrics, params = run_accumulated(mesh, batches, 4)
    for step_metrics, expected in zip(metrics, whole_metrics):
        assert step_metrics.keys() == expected.keys()
        assert step_metrics["scored"] == expected["scored"] == 24   # summed, not averaged
        for name in expected:
            np.testing.assert_allclose(step_metrics[name], expected[name], rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(whole_params), jax.tree.leaves(params)):
        assert rel_rms(b, a) <= 1e-5


def test_micro_batches_stay_on_the_devices_that_hold_their_rows():
    """Micro-batch i is rows i, i + k, ...: every device holds B / (k x 4) rows of each, its own
    rows, and splitting moves no data (no collective in the compiled program)."""
    from sleep_jax.parallel.rules import batch_sharding
    from sleep_jax.train.step import micro_batches

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharding = batch_sharding(mesh, ndim=2)
    tokens = jax.device_put(np.arange(16 * 3, dtype=np.int32).reshape(16, 3), sharding)
    split = jax.jit(lambda b: micro_batches(b, 4, mesh)["tokens"] + 1, in_shardings=(sharding,))
    with jax.set_mesh(mesh):
        micro = split({"tokens": tokens})
        text = split.lower({"tokens": tokens}).compile().as_text()
    for collective in ("all-to-all", "all-gather", "collective-permute", "all-reduce"):
        assert collective not in text
    np.testing.assert_array_equal(micro, np.arange(16 * 3).reshape(4, 4, 3).swapaxes(0, 1) + 1)
    for shard in micro.addressable_shards:   # device rows 4d .. 4d + 3 hold one row of each micro-batch
        rows = shard.data[:, :, 0] // 3
        assert shard.data.shape == (4, 1, 3) and rows.min() // 4 == rows.max() // 4


def test_accumulation_without_scored_weights_micro_batches_equally_and_keeps_frozen_params():
    """A loss_fn with no "scored" metric (a mean over rows): micro-batches weigh the same; a frozen
    parameter stays bit-identical and its gradient is zero."""
    import jax.numpy as jnp
    import optax

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    optimizer = optax.chain(optax.multi_transform({"muon": sgd, "adamw": sgd},
                                                  lambda p: jax.tree.map(lambda _: "adamw", p)))

    def create_params():
        return nnx.State({"w": make_param(jnp.ones((4, 2)), ("embed", "mlp")),
                          "b": make_param(jnp.full((2,), 0.5), ("mlp",))})

    def loss_fn(params, batch):
        out = batch["x"] @ params["w"].get_value() + params["b"].get_value()
        loss = jnp.mean(out ** 2)
        return loss, {"out_mean": jnp.mean(out)}

    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    results = []
    for k in (1, 2):
        state, shardings = init_train_state(create_params, optimizer, mesh)
        trainable = jax.tree.map(lambda _: True, state["params"])
        trainable["b"] = jax.tree.map(lambda _: False, trainable["b"])
        step = make_train_step(loss_fn, optimizer, mesh, shardings, trainable=trainable,
                               accum_steps=k)
        state, metrics = step(state, {"x": x})
        results.append((jax.tree.map(np.asarray, state["params"]),
                        {name: float(v) for name, v in metrics.items()}))
    (whole, whole_metrics), (accumulated, metrics) = results
    np.testing.assert_allclose(accumulated["w"].get_value(), whole["w"].get_value(), rtol=1e-6)
    assert not np.array_equal(whole["w"].get_value(), np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(accumulated["b"].get_value(), np.full((2,), 0.5, np.float32))
    for name in ("loss", "out_mean", "grad_norm"):
        assert metrics[name] == pytest.approx(whole_metrics[name], rel=1e-6)
