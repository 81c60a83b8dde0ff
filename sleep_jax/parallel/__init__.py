"""Mesh, logical-axis sharding rules and the multi-host start."""
from sleep_jax.parallel.distributed import initialize_multihost
from sleep_jax.parallel.mesh import MESH_AXES, make_mesh, mesh_shape
from sleep_jax.parallel.rules import (DEFAULT_RULES, batch_divisor, batch_sharding,
                                      logical_to_spec, tree_shardings)

__all__ = ["MESH_AXES", "make_mesh", "mesh_shape", "DEFAULT_RULES", "logical_to_spec",
           "tree_shardings", "batch_sharding", "batch_divisor", "initialize_multihost"]
