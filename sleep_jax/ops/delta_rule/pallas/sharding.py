"""The Pallas delta rule under a mesh: `shard_map` over batch and heads.

A `pallas_call` is a single-device program, so under a sharded `jit` it is wrapped in
`jax.shard_map`: each device runs the kernels on its own batch rows and value heads. The delta rule
never mixes batch rows or heads, so no communication is needed.
"""
import functools

import jax
from jax.sharding import PartitionSpec as P

from sleep_jax.ops.delta_rule.pallas.api import pallas_gated_delta_rule


def sharded(q, k, v, g, beta, *, scale, initial_state, mesh, batch_axis=None, head_axis=None,
            chunk_size=64, interpret=None, backend=None, sizes=None):
    """`pallas_gated_delta_rule` with batch split over mesh axis `batch_axis` and value heads over
    `head_axis` (either may be None: not split; each may be a name or a tuple of names).

    Shapes as in `pallas_gated_delta_rule` (heads already repeated to HV). B must divide by the
    size of `batch_axis` and HV by the size of `head_axis`. Returns (o, final state), sharded the
    same way.
    """
    for name, axis in (("batch_axis", batch_axis), ("head_axis", head_axis)):
        for a in (axis if isinstance(axis, tuple) else (axis,)):
            if a is not None and a not in mesh.axis_names:
                raise ValueError(f"sharded gated delta rule: `{name}`={a!r} is not an axis of the "
                                 f"mesh {mesh.axis_names}")
    seq = P(batch_axis, None, head_axis, None)
    gate = P(batch_axis, None, head_axis)
    state = P(batch_axis, head_axis, None, None)
    body = functools.partial(pallas_gated_delta_rule, scale=scale, chunk_size=chunk_size,
                             interpret=interpret, backend=backend, sizes=sizes)
    mapped = jax.shard_map(lambda q, k, v, g, beta, s: body(q, k, v, g, beta, initial_state=s),
                           mesh=mesh, in_specs=(seq, seq, seq, gate, gate, state),
                           out_specs=(seq, state), check_vma=False)
    return mapped(q, k, v, g, beta, initial_state)
