"""Logical axis names -> mesh axes -> ``NamedSharding``s.

Every parameter carries Flax sharding metadata naming one logical axis (or ``None``) per
dimension (names from ``sleep_jax.axes``, read with ``logical_axes``). A *rule* maps a logical
name to a mesh axis, a tuple of mesh axes, or ``None`` (replicated). When a dimension is not
divisible by the size of a mesh axis, that mesh axis is dropped for that dimension (the dimension
is replicated over it), so any model fits any mesh.
A mesh axis is used at most once per array (the first dimension that claims it gets it).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from sleep_jax.axes import logical_axes

MeshAxes = str | tuple[str, ...] | None

# Logical name -> mesh axes. ``batch`` is the leading dimension of every input array.
DEFAULT_RULES: dict[str, MeshAxes] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "vocab": "tensor",
    "head_dim": None,
    "conv": None,
}


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                    mesh: jax.sharding.Mesh,
                    rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> PartitionSpec:
    """The ``PartitionSpec`` for an array of ``shape`` whose dimensions have ``logical_axes``.

    Raises:
      ValueError if ``logical_axes`` and ``shape`` differ in length or a name has no rule.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical_axes {tuple(logical_axes)} has {len(logical_axes)} names but the "
                         f"array has shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        target = rules[name]
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        kept = []
        for axis in mesh_axes:
            size = mesh.shape[axis]
            if axis in used or size == 1:
                continue
            product = size
            for k in kept:
                product *= mesh.shape[k]
            if dim % product == 0:
                kept.append(axis)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _variable_sharding(variable: nnx.Variable, mesh, rules) -> nnx.Variable:
    """Replaces a variable's value by its NamedSharding (replicated when it has no logical axes)."""
    value = variable.get_value()
    if not hasattr(value, "shape"):  # an empty placeholder (optax.MaskedNode): nothing to place
        return variable
    shape = value.shape
    axes = logical_axes(variable)
    if axes is None:
        spec = PartitionSpec()
    else:
        spec = logical_to_spec(axes, shape, mesh, rules)
    return variable.replace(NamedSharding(mesh, spec))


def tree_shardings(tree: Any, mesh: jax.sharding.Mesh,
                   rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> Any:
    """A ``NamedSharding`` for every array in ``tree`` (same structure).

    ``tree`` may hold ``nnx.Variable``s (parameters, or optimiser moments mirroring them, which keep
    the variables' ``logical_axes``): they are sharded by their logical axes. Any other leaf (step
    counters, scalars) is replicated. Works on concrete arrays and on ``jax.ShapeDtypeStruct``s.
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(x):
        if _is_variable(x):
            return _variable_sharding(x, mesh, rules)
        return replicated

    return jax.tree.map(one, tree, is_leaf=_is_variable)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2,
                   rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> NamedSharding:
    """Sharding of an input array ``[B, ...]``: the batch over the ``batch`` rule's mesh axes."""
    target = rules["batch"]
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    lead = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def batch_divisor(mesh: jax.sharding.Mesh, rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> int:
    """How many ways the batch dimension is split: the global batch must be a multiple of this."""
    target = rules["batch"]
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    return n
