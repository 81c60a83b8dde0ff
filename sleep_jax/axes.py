"""Logical axis names of parameters: the vocabulary `layers` writes and `parallel` maps to mesh axes.

No project imports, so `layers`, `ops` and `parallel` all import downward from here.

Every parameter is an `nnx.Param` whose Flax sharding metadata (`out_sharding`, what
`nnx.with_partitioning` sets and `nnx.get_partition_spec` reads) holds one name from
`LOGICAL_AXES` (or None) per dimension; `logical_axes(variable)` reads it back.
"""
from flax import nnx

LOGICAL_AXES = ("vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "conv")


def logical_axes(variable: nnx.Variable) -> tuple | None:
    """The logical axis names of a parameter (or of an optimiser moment mirroring one), from its
    Flax sharding metadata; None when it has none."""
    names = variable.get_metadata().get("out_sharding")
    return None if names is None else tuple(names)
