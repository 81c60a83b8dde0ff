"""The sharded train step: 8 simulated CPU devices (data 2, fsdp 2, tensor 2) vs one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.parallel import make_mesh
from sleep_jax.train.optimizer import make_optimizer
from sleep_jax.train.step import init_train_state, make_train_step

TRAIN = dict(steps=10, warmup_steps=2, schedule="cosine", final_lr_fraction=0.1, muon_lr=2e-3,
             adamw_lr=5e-5, weight_decay=0.01, grad_clip=1.0, adam_b1=0.9, adam_b2=0.95,
             muon_beta=0.95)


class TinyLM(nnx.Module):
    """A stand-in language model with every kind of logical axis the rules shard."""

    def __init__(self, *, rngs: nnx.Rngs, vocab=16, d=8, heads=2, head_dim=4, mlp=12):
        init = jax.nn.initializers.normal(0.3)
        self.embed = nnx.Param(init(rngs.params(), (vocab, d)), logical_axes=("vocab", "embed"))
        self.q = nnx.Param(init(rngs.params(), (d, heads, head_dim)),
                           logical_axes=("embed", "heads", "head_dim"))
        self.o = nnx.Param(init(rngs.params(), (heads, head_dim, d)),
                           logical_axes=("heads", "head_dim", "embed"))
        self.up = nnx.Param(init(rngs.params(), (d, mlp)), logical_axes=("embed", "mlp"))
        self.down = nnx.Param(init(rngs.params(), (mlp, d)), logical_axes=("mlp", "embed"))
        self.scale = nnx.Param(jnp.ones((d,)), logical_axes=("embed",))

    def __call__(self, tokens):
        x = self.embed[tokens] * self.scale[...]
        x = x + jnp.einsum("bthk,hkd->btd", jnp.einsum("btd,dhk->bthk", x, self.q[...]), self.o[...])
        x = x + jax.nn.gelu(x @ self.up[...]) @ self.down[...]
        return x @ self.embed[...].T


def tiny_loss_fn(graphdef):
    def loss_fn(params, batch):
        logits = nnx.merge(graphdef, params)(batch["tokens"])[:, :-1]
        targets = batch["tokens"][:, 1:]
        mask = batch["loss_mask"][:, :-1].astype(jnp.float32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        loss = (nll * mask).sum() / mask.sum()
        return loss, {"token_accuracy": ((logits.argmax(-1) == targets) * mask).sum() / mask.sum()}
    return loss_fn


def run_steps(mesh, batches, steps=3):
    optimizer = make_optimizer(TRAIN)
    graphdef = nnx.graphdef(TinyLM(rngs=nnx.Rngs(0)))
    state, shardings = init_train_state(lambda: nnx.state(TinyLM(rngs=nnx.Rngs(0))), optimizer, mesh)
    step = make_train_step(tiny_loss_fn(graphdef), optimizer, mesh, shardings)
    losses = []
    for i in range(steps):
        state, metrics = step(state, batches[i])
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, state["params"]), state


def make_batches(steps=3, batch=8, length=12):
    rng = np.random.default_rng(0)
    return [{"tokens": rng.integers(0, 16, (batch, length), dtype=np.int32),
             "loss_mask": (rng.random((batch, length)) < 0.7).astype(np.int32)}
            for _ in range(steps)]


def test_sharded_step_matches_single_device():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    batches = make_batches()
    one_losses, one_params, _ = run_steps(make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                                     jax.devices()[:1]), batches)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    many_losses, many_params, state = run_steps(mesh, batches)
    # The state really is sharded: the MLP weight is split over fsdp x tensor.
    assert state["params"]["up"].get_value().sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    np.testing.assert_allclose(many_losses, one_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one_params), jax.tree.leaves(many_params)):
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a)
    # Three steps of Muon/AdamW moved every parameter.
    init = jax.tree.map(np.asarray, nnx.state(TinyLM(rngs=nnx.Rngs(0))))
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(many_params)):
        assert not np.allclose(a, b)
