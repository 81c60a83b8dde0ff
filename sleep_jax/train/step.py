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
With gradient accumulation (``accum_steps`` k > 1, ``train.grad_accum_steps``) one step runs the
batch as k micro-batches in a ``lax.scan`` and applies one update, the same as for the whole
batch up to float rounding (``make_train_step``).
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


# How an accumulated step (``accum_steps > 1``) combines the metrics of its micro-batches (each a
# scalar from ``loss_fn``): counts are summed; means over the rows with a scored token are weighted
# by each micro-batch's count of such rows (read from its ``loss_mask``: rows with a nonzero entry
# before the last position, exact when the mask scores only prediction windows, as the loop's
# batches do: their window kinds come from it); every other metric (``loss``,
# ``token_accuracy``, ...) is taken for a mean over scored tokens and weighted like the gradient,
# by ``scored``.
SUMMED_METRICS = frozenset({"scored"})
ROW_MEAN_METRICS = frozenset({"sequence_accuracy"})


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, state_shardings: Any, trainable: Any = None,
                    accum_steps: int = 1) -> Callable:
    """``step(state, batch) -> (state, metrics)``, jitted with shardings and a donated state.

    Args:
      trainable: None (all trainable) or a tree of Python bools like ``params``
        (``optimizer.trainable_mask``): a False parameter's gradient is zeroed before clipping
        and its value is carried over unchanged (bit-identical).
      loss_fn: ``(params, batch) -> (loss, metrics)``; ``batch`` holds ``tokens`` and
        ``loss_mask`` int32 ``[B, T]``. Its metrics dict is returned with ``grad_norm`` and the
        learning rates of this update (``lr_muon``, ``lr_adamw``) added.
      accum_steps: k, gradient accumulation (``train.grad_accum_steps``). 1: one forward and
        backward pass over the batch. k > 1: the batch ``[B, ...]`` is split into k micro-batches
        of B/k rows, micro-batch i holding rows i, i + k, i + 2k, ... (so each device keeps its
        own rows: every micro-batch is sharded over the batch axes as the batch is, with no
        communication; B must be a multiple of k x the batch axes' size); a ``lax.scan`` runs
        the forward and backward pass of one micro-batch at a time (only its activations are
        live) and sums the gradients weighted by each micro-batch's ``metrics["scored"]``
        (equal weights when ``loss_fn`` reports no ``scored``): ``sum_i n_i grad_i / sum_i n_i``,
        the gradient of the loss over the whole batch, a mean over its scored tokens. The
        optimiser update, divergence guard and trainable mask then act once, as for k = 1.
        Metrics are combined as ``SUMMED_METRICS`` / ``ROW_MEAN_METRICS`` above say.
    """
    if isinstance(accum_steps, bool) or not isinstance(accum_steps, int) or accum_steps < 1:
        raise ValueError(f"accum_steps={accum_steps!r}: must be an int >= 1")
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = batch_sharding(mesh, ndim=2)

    def step(state, batch_arrays):
        if accum_steps == 1:
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state["params"], batch_arrays)
        else:
            loss, metrics, grads = _accumulated_gradient(
                loss_fn, state["params"], batch_arrays, accum_steps, mesh,
                state_shardings["params"], trainable)
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


def micro_batches(batch_arrays: dict, accum_steps: int, mesh: jax.sharding.Mesh) -> dict:
    """``[B, ...] -> [k, B/k, ...]``: micro-batch i is rows i, i + k, i + 2k, ... of the batch.

    Viewed as ``[B/k, k, ...]`` (a reshape that keeps each device's contiguous block of rows on
    that device, since B/k is a multiple of the batch axes' size) and then with k moved to the
    front, every micro-batch has B/(k x devices) rows on each device: sharded like the batch,
    without moving data (a split into contiguous blocks ``[k, B/k]`` would put each micro-batch
    on a few devices and need an all-to-all).
    """
    def split(x):
        rows = x.shape[0]
        if rows % accum_steps:
            raise ValueError(f"batch of {rows} rows: not a multiple of accum_steps={accum_steps}")
        micro = x.reshape(rows // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
        spec = batch_sharding(mesh, ndim=x.ndim).spec
        return jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, PartitionSpec(None, *spec)))
    return jax.tree.map(split, batch_arrays)


def _accumulated_gradient(loss_fn: LossFn, params: Any, batch_arrays: dict, accum_steps: int,
                          mesh: jax.sharding.Mesh, param_shardings: Any,
                          trainable: Any) -> tuple[jax.Array, dict, Any]:
    """``(loss, metrics, grads)`` of the whole batch from ``accum_steps`` micro-batches, one at a
    time in a ``lax.scan`` (see ``make_train_step``). The gradient sums are float32 (at least)
    and held only for trainable parameters, sharded as the parameters."""
    leaves, treedef = jax.tree.flatten(params)
    keep = [True] * len(leaves) if trainable is None else [bool(k) for k in jax.tree.leaves(trainable)]
    shardings = jax.tree.leaves(param_shardings)
    if not len(keep) == len(shardings) == len(leaves):
        raise ValueError("trainable and the parameter shardings must have the parameters' structure")
    kept = [i for i, k in enumerate(keep) if k]

    def accumulator_dtype(x):
        return jnp.promote_types(x.dtype, jnp.float32)

    def constrain(sums):
        return [jax.lax.with_sharding_constraint(s, shardings[i]) for i, s in zip(kept, sums)]

    def micro_step(sums, micro):
        micro = jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(x, batch_sharding(mesh, ndim=x.ndim)), micro)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, micro)
        weight = (jnp.asarray(metrics["scored"], jnp.float32) if "scored" in metrics
                  else jnp.ones((), jnp.float32))
        grad_leaves = jax.tree.leaves(grads)
        sums = constrain([s + weight * grad_leaves[i].astype(s.dtype) for i, s in zip(kept, sums)])
        rows = (jnp.sum(jnp.any(micro["loss_mask"][:, :-1] != 0, axis=1)).astype(jnp.float32)
                if "loss_mask" in micro else weight)
        return sums, (loss, metrics, weight, rows)

    zeros = constrain([jnp.zeros(leaves[i].shape, accumulator_dtype(leaves[i])) for i in kept])
    sums, (losses, metrics, weights, rows) = jax.lax.scan(
        micro_step, zeros, micro_batches(batch_arrays, accum_steps, mesh))

    def mean(values, w):
        total = jnp.sum(w)
        return jnp.tensordot(w, values.astype(jnp.float32), axes=1) / jnp.where(total > 0, total, 1.0)

    total = jnp.sum(weights)
    total = jnp.where(total > 0, total, 1.0)
    grad_leaves = [jnp.zeros_like(leaf) for leaf in leaves]
    for i, s in zip(kept, sums):
        grad_leaves[i] = (s / total).astype(leaves[i].dtype)
    combined = {}
    for name, values in metrics.items():
        if name in SUMMED_METRICS:
            combined[name] = jnp.sum(values, axis=0)
        else:
            combined[name] = mean(values, rows if name in ROW_MEAN_METRICS else weights)
    return mean(losses, weights), combined, jax.tree.unflatten(treedef, grad_leaves)


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
    """``(params, batch) -> {"predictions": int32 [B, T], "nll": float32 [B, T], "passes": int32
    [B, C]}`` through ``sleep.sequence_scores``."""
    return _on_model(sequence_scores, graphdef, sleep, kinds)
