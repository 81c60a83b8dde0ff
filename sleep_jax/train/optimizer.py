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

Both learning rates follow one schedule shape (linear warmup, then constant / cosine / linear
decay) scaled to their own peak, and gradients are clipped by global norm first.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import optax
from flax import nnx
from optax.contrib import MuonDimensionNumbers

SCHEDULES = ("constant", "cosine", "linear")


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
    axes = x.get_metadata().get("logical_axes")
    return x.replace(muon_dimension_numbers(tuple(value.shape), axes))


def _dimension_numbers_tree(params: Any) -> Any:
    return jax.tree.map(_variable_dimension_numbers, params, is_leaf=_is_variable)


def optimizer_labels(params: Any) -> Any:
    """``"muon"`` or ``"adamw"`` for every parameter (same structure as ``params``)."""
    def label(x):
        if _is_variable(x):
            return "adamw" if _variable_dimension_numbers(x).get_value() is None else "muon"
        return "muon" if muon_dimension_numbers(tuple(x.shape), None) is not None else "adamw"
    return jax.tree.map(label, params, is_leaf=_is_variable)


def learning_rate_schedule(peak: float, train_config: Mapping[str, Any]) -> optax.Schedule:
    """Linear warmup over ``train.warmup_steps`` to ``peak``, then ``train.schedule`` until
    ``train.steps`` (``cosine``/``linear`` decay to ``peak * train.final_lr_fraction``)."""
    steps = int(train_config["steps"])
    warmup = int(train_config["warmup_steps"])
    kind = train_config["schedule"]
    final = peak * float(train_config["final_lr_fraction"])
    if kind not in SCHEDULES:
        raise ValueError(f"train.schedule={kind!r}: must be one of {SCHEDULES}")
    decay_steps = max(steps - warmup, 1)
    if kind == "constant":
        after = optax.constant_schedule(peak)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=final / peak if peak else 0.0)
    else:
        after = optax.linear_schedule(peak, final, decay_steps)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(train_config: Mapping[str, Any]) -> optax.GradientTransformation:
    """Clip by global norm, then Muon (``train.muon_lr``) / AdamW (``train.adamw_lr``) by label.

    Keys read from the ``train`` block: ``steps``, ``warmup_steps``, ``schedule``,
    ``final_lr_fraction``, ``muon_lr``, ``adamw_lr``, ``weight_decay``, ``grad_clip``
    (<= 0 disables clipping), ``adam_b1``, ``adam_b2``, ``muon_beta``.
    """
    muon_lr = learning_rate_schedule(float(train_config["muon_lr"]), train_config)
    adamw_lr = learning_rate_schedule(float(train_config["adamw_lr"]), train_config)
    weight_decay = float(train_config["weight_decay"])
    muon = optax.contrib.muon(
        learning_rate=muon_lr, beta=float(train_config["muon_beta"]), weight_decay=weight_decay,
        muon_weight_dimension_numbers=_dimension_numbers_tree)
    adamw = optax.adamw(learning_rate=adamw_lr, b1=float(train_config["adam_b1"]),
                        b2=float(train_config["adam_b2"]), weight_decay=weight_decay)
    parts = []
    if float(train_config["grad_clip"]) > 0:
        parts.append(optax.clip_by_global_norm(float(train_config["grad_clip"])))
    parts.append(optax.multi_transform({"muon": muon, "adamw": adamw}, optimizer_labels))
    return optax.chain(*parts)
