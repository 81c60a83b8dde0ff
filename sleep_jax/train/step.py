"""The jitted train and predict steps, with explicit shardings on the mesh.

The train state is a dict ``{"step": int32 [], "params": nnx.State, "opt_state": optax state,
"diverged_at_step": int32 []}``. ``step`` counts the updates applied. The divergence guard lives
in the step: an update whose loss, gradient norm or update norm is not finite is not applied,
and ``diverged_at_step`` records the first such step (0: none); from then on the state stays the
last good one, so nothing non-finite ever reaches the parameters, a checkpoint or an eval. The
loop reads ``diverged_at_step`` whenever it syncs (logging, saving, evaluating) and stops.
Parameters and the optimiser moments that mirror them are sharded by their ``logical_axes``
(``sleep_jax.parallel.rules``); the batch by the ``batch`` rule; scalars are replicated.
The state argument is donated: its buffers are reused for the new state.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from sleep_jax.parallel.rules import batch_sharding, tree_shardings
from sleep_jax.sleep import SleepConfig, sequence_loss, sequence_scores
from sleep_jax.train.optimizer import learning_rates

LossFn = Callable[[Any, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def _state_builder(create_params: Callable[[], Any],
                   optimizer: optax.GradientTransformation) -> Callable[[], dict]:
    def create():
        params = create_params()
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": optimizer.init(params), "diverged_at_step": jnp.zeros((), jnp.int32)}
    return create


def init_train_state(create_params: Callable[[], Any], optimizer: optax.GradientTransformation,
                     mesh: jax.sharding.Mesh) -> tuple[dict, Any]:
    """Creates the train state directly in its sharded layout.

    Args:
      create_params: builds the parameter ``nnx.State`` (e.g. ``nnx.split(HybridModel(...))[1]``).
    Returns:
      ``(state, shardings)``: the state and the matching tree of ``NamedSharding``s.
    """
    create = _state_builder(create_params, optimizer)
    shardings = tree_shardings(jax.eval_shape(create), mesh)
    return jax.jit(create, out_shardings=shardings)(), shardings


def train_state_from_params(params: Any, optimizer: optax.GradientTransformation,
                            mesh: jax.sharding.Mesh, step: int = 0) -> tuple[dict, Any]:
    """A train state at ``step`` from given parameters (pretrained, or the last stage's) with a
    fresh optimiser state; ``(state, shardings)`` as ``init_train_state``."""
    create = _state_builder(lambda: params, optimizer)
    shardings = tree_shardings(jax.eval_shape(create), mesh)
    params = jax.device_put(params, shardings["params"])

    def start(params):
        return dict(_state_builder(lambda: params, optimizer)(), step=jnp.asarray(step, jnp.int32))
    return jax.jit(start, out_shardings=shardings)(params), shardings


def abstract_train_state(create_params: Callable[[], Any], optimizer: optax.GradientTransformation,
                         mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
    """``(abstract state of ShapeDtypeStructs, shardings)`` without allocating anything."""
    abstract = jax.eval_shape(_state_builder(create_params, optimizer))
    return abstract, tree_shardings(abstract, mesh)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, state_shardings: Any, trainable: Any = None) -> Callable:
    """``step(state, batch) -> (state, metrics)``, jitted with shardings and a donated state.

    Args:
      trainable: None (all trainable) or a tree of Python bools like ``params``
        (``optimizer.trainable_mask``): a False parameter's gradient is zeroed before clipping
        and its value is carried over unchanged (bit-identical).
      loss_fn: ``(params, batch) -> (loss, metrics)``; ``batch`` holds ``tokens`` and
        ``loss_mask`` int32 ``[B, T]``. Its metrics dict is returned with ``grad_norm`` and the
        learning rates of this update (``lr_muon``, ``lr_adamw``) added.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = batch_sharding(mesh, ndim=2)

    def step(state, batch_arrays):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch_arrays)
        if trainable is not None:
            grads = jax.tree.map(lambda g, keep: g if keep else jnp.zeros_like(g), grads, trainable)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        if trainable is not None:
            params = jax.tree.map(lambda new, old, keep: new if keep else old, params,
                                  state["params"], trainable)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
        healthy = finite & (state["diverged_at_step"] == 0)
        applied = jax.tree.map(
            lambda new, old: jnp.where(healthy, new, old),
            {"step": state["step"] + 1, "params": params, "opt_state": opt_state},
            {key: state[key] for key in ("step", "params", "opt_state")})
        diverged_at_step = jnp.where(finite | (state["diverged_at_step"] > 0),
                                     state["diverged_at_step"], state["step"] + 1)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, **learning_rates(opt_state))
        return dict(applied, diverged_at_step=diverged_at_step), metrics

    return _on_mesh(mesh, jax.jit(step, in_shardings=(state_shardings, batch),
                                  out_shardings=(state_shardings, replicated), donate_argnums=0))


def make_predict_step(predict_fn: Callable[[Any, dict[str, jax.Array]], jax.Array],
                      mesh: jax.sharding.Mesh, param_shardings: Any) -> Callable:
    """``predict(params, batch) -> int32 [B, T]`` greedy predictions, jitted on the mesh."""
    batch = batch_sharding(mesh, ndim=2)
    return _on_mesh(mesh, jax.jit(predict_fn, in_shardings=(param_shardings, batch), out_shardings=batch))


def _on_mesh(mesh: jax.sharding.Mesh, jitted: Callable) -> Callable:
    """``jitted`` called with ``mesh`` as the ambient mesh (``jax.set_mesh``), so that ops which
    need the mesh while tracing find it: the Pallas delta rule wraps its kernels in a
    ``shard_map`` over batch and heads. ``call.compile(*abstract_args)`` compiles it without
    running (``sleep_jax.bench.memory``)."""
    def call(*args):
        with jax.set_mesh(mesh):
            return jitted(*args)

    def compile_only(*args):
        with jax.set_mesh(mesh):
            return jitted.trace(*args).lower().compile()
    call.compile = compile_only
    return call


def _on_model(sequence_fn: Callable, graphdef: nnx.GraphDef, sleep: SleepConfig, kinds: str) -> Callable:
    """``(params, batch) -> sequence_fn(model, tokens, loss_mask, sleep=sleep, kinds=kinds)``, the
    model merged from ``graphdef`` and ``params``."""
    def fn(params, batch_arrays):
        model = nnx.merge(graphdef, params)
        return sequence_fn(model, batch_arrays["tokens"], batch_arrays["loss_mask"],
                           sleep=sleep, kinds=kinds)
    return fn


def model_loss_fn(graphdef: nnx.GraphDef, *, sleep: SleepConfig, kinds: str) -> LossFn:
    """``(params, batch) -> (loss, metrics)`` for the hybrid model through ``sleep.sequence_loss``."""
    return _on_model(sequence_loss, graphdef, sleep, kinds)


def model_predict_fn(graphdef: nnx.GraphDef, *, sleep: SleepConfig, kinds: str) -> Callable:
    """``(params, batch) -> {"predictions": int32 [B, T], "nll": float32 [B, T]}`` through
    ``sleep.sequence_scores``."""
    return _on_model(sequence_scores, graphdef, sleep, kinds)
