"""Pallas kernels of the chunked gated delta rule (forward and backward).

Entry points: `pallas_gated_delta_rule` (one device, or inside a `shard_map`), `sharded`
(the same under a mesh, batch and heads split across devices) and `on_ambient_mesh` (`sharded` on
the mesh set by `jax.set_mesh`, else one device: what `gated_delta_rule(impl="pallas")` calls). Modules:
  chunk_math   the math of one chunk (pure jnp on loaded tiles), shared by all kernels
  forward      wy_prep, recurrence, output kernels
  backward     reverse_recurrence, chunk_gradients kernels
  api          padding, layout, the custom VJP
  block_sizes  per-backend tile sizes and launch settings (data)
  launch       KernelConfig and the single pallas_call site
  sharding     shard_map wrapper
"""
from sleep_jax.ops.delta_rule.pallas.api import chunked_kernels, pallas_gated_delta_rule
from sleep_jax.ops.delta_rule.pallas.block_sizes import BLOCK_SIZES, block_sizes
from sleep_jax.ops.delta_rule.pallas.sharding import on_ambient_mesh, sharded

__all__ = ["pallas_gated_delta_rule", "chunked_kernels", "sharded", "on_ambient_mesh", "BLOCK_SIZES", "block_sizes"]
