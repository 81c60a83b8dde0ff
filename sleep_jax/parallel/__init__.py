"""Mesh, logical-axis sharding rules, the multi-process start and the platform choice."""
from sleep_jax.parallel.distributed import (initialize_multihost, keep_freed_host_memory, runs_on_cpu,
                                             use_cpu_without_accelerator)
from sleep_jax.parallel.mesh import MESH_AXES, make_mesh, mesh_shape
from sleep_jax.parallel.rules import (DEFAULT_RULES, batch_divisor, batch_sharding,
                                      logical_to_spec, tree_shardings)

__all__ = ["MESH_AXES", "make_mesh", "mesh_shape", "DEFAULT_RULES", "logical_to_spec",
           "tree_shardings", "batch_sharding", "batch_divisor", "initialize_multihost",
           "use_cpu_without_accelerator", "runs_on_cpu", "keep_freed_host_memory"]
