import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from optax.contrib import MuonDimensionNumbers

from sleep_jax.layers.common import make_param
from sleep_jax.train.config import TrainConfig
from sleep_jax.train.optimizer import (learning_rate_schedule, learning_rates, make_optimizer,
                                       muon_dimension_numbers, optimizer_labels)

TRAIN = TrainConfig(steps=100, warmup_steps=10, schedule="cosine", final_lr_fraction=0.1,
                    muon_lr=2e-3, adamw_lr=5e-5, weight_decay=0.0, grad_clip=1.0)


def params():
    return nnx.State({
        "embed": make_param(jnp.ones((10, 8)), ("vocab", "embed")),
        "q": make_param(jnp.ones((8, 2, 4)), ("embed", "heads", "head_dim")),
        "o": make_param(jnp.ones((2, 4, 8)), ("heads", "head_dim", "embed")),
        "up": make_param(jnp.ones((8, 16)), ("embed", "mlp")),
        "conv": make_param(jnp.ones((4, 8)), ("conv", "embed")),
        "norm": make_param(jnp.ones((8,)), ("embed",)),
    })


def test_muon_takes_hidden_matrices_adamw_the_rest():
    labels = optimizer_labels(params())
    assert {name: labels[name] for name in labels} == {
        "embed": "adamw", "q": "muon", "o": "muon", "up": "muon", "conv": "adamw", "norm": "adamw"}


def test_muon_matrix_is_inputs_by_outputs():
    assert muon_dimension_numbers((8, 2, 4), ("embed", "heads", "head_dim")) == \
        MuonDimensionNumbers(0, (1, 2))
    assert muon_dimension_numbers((2, 4, 8), ("heads", "head_dim", "embed")) == \
        MuonDimensionNumbers((0, 1), 2)
    assert muon_dimension_numbers((8,), ("embed",)) is None
    assert muon_dimension_numbers((3, 5), None) == MuonDimensionNumbers(0, 1)


def test_schedule_warms_up_then_decays():
    schedule = learning_rate_schedule(1.0, TRAIN)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1)
    constant = learning_rate_schedule(1.0, dataclasses.replace(TRAIN, schedule="constant",
                                                               warmup_steps=0))
    assert float(constant(50)) == 1.0


def test_logged_learning_rates_are_the_injected_schedule_values():
    p = params()
    optimizer = make_optimizer(TRAIN)
    state = optimizer.init(p)
    grads = jax.tree.map(jnp.ones_like, p)
    muon, adamw = learning_rate_schedule(2e-3, TRAIN), learning_rate_schedule(5e-5, TRAIN)
    update = jax.jit(optimizer.update)
    for step in range(1, 4):  # after update s, the state holds the rate that update used
        _, state = update(grads, state, p)
        lrs = learning_rates(state)
        assert float(lrs["lr_muon"]) == pytest.approx(float(muon(step - 1)))
        assert float(lrs["lr_adamw"]) == pytest.approx(float(adamw(step - 1)))


def test_update_moves_muon_params_at_muon_lr_and_adamw_params_at_adamw_lr():
    p = params()
    optimizer = make_optimizer(dataclasses.replace(TRAIN, warmup_steps=0, schedule="constant"))
    state = optimizer.init(p)
    keys = iter(jax.random.split(jax.random.key(0), 6))
    # Huge gradients: clipping must act before both optimisers (neither reacts to scale anyway).
    grads = jax.tree.map(lambda x: 1e3 * jax.random.normal(next(keys), x.shape), p)
    updates, _ = optimizer.update(grads, state, p)
    u = {name: np.asarray(updates[name].get_value()) for name in updates}
    g = {name: np.asarray(grads[name].get_value()) for name in grads}
    # AdamW's first step is -lr * sign(g).
    for name in ("norm", "embed", "conv"):
        np.testing.assert_allclose(u[name], -5e-5 * np.sign(g[name]), rtol=1e-3)
    # Muon's is -lr * (g orthogonalised: singular values near 1) * sqrt(max(1, fan_out / fan_in)).
    singular = np.linalg.svd(u["up"] / (-2e-3 * np.sqrt(16 / 8)), compute_uv=False)
    assert 0.5 < singular.min() and singular.max() < 1.5
    assert np.sum(u["up"] * g["up"]) < 0  # a descent direction


def test_frozen_parameters_get_no_optimiser_state():
    """A trainable filter labels the rest "frozen" (set_to_zero: no moments). That frozen values
    stay bit-identical through real steps is checked end to end in tests/test_finetune.py."""
    from sleep_jax.train.optimizer import trainable_mask
    p = params()
    labels = optimizer_labels(p, ("q", "no*"))
    assert {name: labels[name] for name in labels} == {
        "embed": "frozen", "q": "muon", "o": "frozen", "up": "frozen", "conv": "frozen", "norm": "adamw"}
    mask = trainable_mask(p, ("q", "no*"))
    assert {name: jax.tree.leaves(mask[name]) for name in mask} == {
        "embed": [False], "q": [True], "o": [False], "up": [False], "conv": [False], "norm": [True]}
    optimizer = make_optimizer(TRAIN, ("q", "no*"))
    state = optimizer.init(p)
    moments = [x.shape for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) >= 1]
    # AdamW's two moments of norm, Muon's momentum of q (and its (3,) Newton-Schulz coefficients);
    # nothing shaped like a frozen parameter.
    assert sorted(moments) == sorted([(3,), (8,), (8,), (8, 2, 4)])
