"""The optimiser: Muon on hidden weight matrices, AdamW on everything else (as in the paper).

Which parameters get Muon is decided from their ``logical_axes`` metadata:

- Muon: every weight with >= 2 dimensions whose first or last logical axis is ``embed`` (the
  projections into and out of the residual stream: q/k/v/o, gates, MLP up/down), and any other
  plain 2-D matrix. The matrix Muon orthogonalises is (input dims) x (output dims): for
  ``[embed, heads, head_dim]`` the reduction axis is ``embed`` and the output axes are
  ``(heads, head_dim)`` (per-head blocks flattened); for ``[heads, head_dim, embed]`` it is the
  reverse.
- AdamW: embeddings and the unembedding (any parameter with a ``vocab`` axis: Muon is not meant
  for lookup tables or the output classifier, following Jordan et al.'s recipe), depthwise
  convolution kernels (``conv`` axis), and vectors (norm scales, biases, ``A_log``, ``dt_bias``).

A stage may freeze parameters (``trainable``: path patterns, see ``parameter_path``): those are
labelled ``frozen`` and get ``optax.set_to_zero`` (no optimiser state at all); the train step
also zeroes their gradients before clipping and keeps their values exactly.

Both learning rates follow one schedule shape (linear warmup, then constant / cosine / linear
decay) scaled to their own peak, and gradients are clipped by global norm first. Each optimiser
is wrapped in ``optax.inject_hyperparams``, so the learning rate of the last update sits in the
optimiser state: ``learning_rates(opt_state)`` reads it (for logging) rather than rebuilding the
schedule.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Sequence

import jax
import optax
from flax import nnx
from optax.contrib import MuonDimensionNumbers

from sleep_jax.axes import logical_axes as variable_axes
from sleep_jax.train.config import TrainConfig

LABELS = ("muon", "adamw")
FROZEN = "frozen"


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def muon_dimension_numbers(shape: tuple[int, ...],
                           logical_axes: tuple[str | None, ...] | None) -> MuonDimensionNumbers | None:
    """How Muon sees a parameter as a matrix, or ``None`` if the parameter goes to AdamW."""
    ndim = len(shape)
    if ndim < 2:
        return None
    if logical_axes is None:
        return MuonDimensionNumbers(0, 1) if ndim == 2 else None
    if "vocab" in logical_axes or "conv" in logical_axes:
        return None
    if logical_axes[0] == "embed":
        return MuonDimensionNumbers(0, tuple(range(1, ndim)))
    if logical_axes[-1] == "embed":
        return MuonDimensionNumbers(tuple(range(ndim - 1)), ndim - 1)
    return MuonDimensionNumbers(0, 1) if ndim == 2 else None


def _variable_dimension_numbers(x: Any) -> Any:
    if not _is_variable(x):
        return None
    value = x.get_value()
    if not hasattr(value, "shape"):  # masked out by multi_transform: not Muon's
        return x.replace(None)
    return x.replace(muon_dimension_numbers(tuple(value.shape), variable_axes(x)))


def _dimension_numbers_tree(params: Any) -> Any:
    return jax.tree.map(_variable_dimension_numbers, params, is_leaf=_is_variable)


def parameter_path(key_path: tuple) -> str:
    """A parameter's path as the stage filters see it, e.g. ``blocks/3/mixer/w_q`` (the dict keys
    of the params tree joined by ``/``; the variable's own ``value`` attribute left out)."""
    return "/".join(str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey))


def is_trainable(path: str, patterns: Sequence[str]) -> bool:
    """Whether a parameter path matches any ``fnmatch`` pattern (``*`` matches across ``/``)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def trainable_mask(params: Any, patterns: Sequence[str]) -> Any:
    """``True`` / ``False`` per array of ``params`` (same structure): trainable under ``patterns``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: is_trainable(parameter_path(path), patterns), params)


def optimizer_labels(params: Any, trainable: Sequence[str] = ("*",)) -> Any:
    """``"muon"``, ``"adamw"`` or ``"frozen"`` (no pattern of ``trainable`` matches its path) for
    every parameter (same structure as ``params``)."""
    def label(path, x):
        if not is_trainable(parameter_path(path), trainable):
            return FROZEN
        if _is_variable(x):
            return "adamw" if _variable_dimension_numbers(x).get_value() is None else "muon"
        return "muon" if muon_dimension_numbers(tuple(x.shape), None) is not None else "adamw"
    return jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_variable)


def learning_rate_schedule(peak: float, train: TrainConfig) -> optax.Schedule:
    """Linear warmup over ``train.warmup_steps`` to ``peak``, then ``train.schedule`` until
    ``train.steps`` (``cosine``/``linear`` decay to ``peak * train.final_lr_fraction``)."""
    final = peak * train.final_lr_fraction
    decay_steps = max(train.steps - train.warmup_steps, 1)
    if train.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif train.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=train.final_lr_fraction)
    else:
        after = optax.linear_schedule(peak, final, decay_steps)
    if train.warmup_steps == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, train.warmup_steps), after],
                                [train.warmup_steps])


def make_optimizer(train: TrainConfig, trainable: Sequence[str] = ("*",)) -> optax.GradientTransformation:
    """Clip by global norm (``train.grad_clip``; 0: no clipping), then Muon (``train.muon_lr``) /
    AdamW (``train.adamw_lr``) by label, each with its schedule injected into its state; the
    parameters no pattern of ``trainable`` matches get zero updates and no state."""
    muon = optax.inject_hyperparams(optax.contrib.muon,
                                    static_args=("muon_weight_dimension_numbers",))(
        learning_rate=learning_rate_schedule(train.muon_lr, train), beta=train.muon_beta,
        weight_decay=train.weight_decay, muon_weight_dimension_numbers=_dimension_numbers_tree)
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=learning_rate_schedule(train.adamw_lr, train), b1=train.adam_b1,
        b2=train.adam_b2, weight_decay=train.weight_decay)
    parts = []
    if train.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(train.grad_clip))
    parts.append(optax.multi_transform({"muon": muon, "adamw": adamw, FROZEN: optax.set_to_zero()},
                                       lambda params: optimizer_labels(params, trainable)))
    return optax.chain(*parts)


def learning_rates(opt_state: Any) -> dict[str, jax.Array]:
    """``{"lr_muon", "lr_adamw"}``: the learning rates of the last update, read from the state of
    ``make_optimizer``'s ``inject_hyperparams`` wrappers (0 before the first update)."""
    partition = opt_state[-1]  # the multi_transform's state, last in the chain
    return {f"lr_{label}": partition.inner_states[label].inner_state.hyperparams["learning_rate"]
            for label in LABELS}
