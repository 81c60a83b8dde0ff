"""The Pallas delta rule under a mesh: `shard_map` over batch and heads.

A `pallas_call` is a single-device program, so under a sharded `jit` it is wrapped in
`jax.shard_map`: each device runs the kernels on its own batch rows and value heads. The delta rule
never mixes batch rows or heads, so no communication is needed.

`on_ambient_mesh` is what `gated_delta_rule(impl="pallas")` calls: it finds the mesh set with
`jax.set_mesh` (the train and predict steps trace under it) and splits batch rows and value heads
by the project's logical-axis rules (`sleep_jax.parallel.rules`: batch over data and fsdp, heads
over tensor; an axis that does not divide the dimension is left out).
"""
import functools

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from sleep_jax.ops.delta_rule.pallas.api import pallas_gated_delta_rule
from sleep_jax.parallel.rules import logical_to_spec


def sharded(q, k, v, g, beta, *, scale, initial_state, mesh, batch_axis=None, head_axis=None,
            chunk_size=64, interpret=None, backend=None, sizes=None):
    """`pallas_gated_delta_rule` with batch split over mesh axis `batch_axis` and value heads over
    `head_axis` (either may be None: not split; each may be a name or a tuple of names).

    Shapes as in `pallas_gated_delta_rule` (q, k with H key heads). B must divide by the
    size of `batch_axis` and H (hence HV) by the size of `head_axis`: each device holds whole
    groups of value heads with their key head. Returns (o, final state), sharded the
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
    args = (q, k, v, g, beta, initial_state)
    specs = (seq, seq, seq, gate, gate, state)
    if jax.sharding.AxisType.Explicit in mesh.axis_types:
        # Explicit axes: the inputs' types carry their sharding, which must equal the in_specs.
        args = tuple(jax.reshard(x, NamedSharding(mesh, spec)) for x, spec in zip(args, specs))
    mapped = jax.shard_map(lambda q, k, v, g, beta, s: body(q, k, v, g, beta, initial_state=s),
                           mesh=mesh, in_specs=specs, out_specs=(seq, state), check_vma=False)
    return mapped(*args)


def on_ambient_mesh(q, k, v, g, beta, *, scale, initial_state, chunk_size=64):
    """`pallas_gated_delta_rule` on the mesh set by `jax.set_mesh`, if any spans several devices.

    Shapes as in `pallas_gated_delta_rule` (q, k with H key heads). Without such a mesh it
    is the plain single-device call.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return pallas_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                       chunk_size=chunk_size)
    # Split heads only where the axis divides the key heads (then each device holds whole groups).
    batch_axis, _, head_axis, _ = logical_to_spec(("batch", None, "heads", None), q.shape, mesh)
    return sharded(q, k, v, g, beta, scale=scale, initial_state=initial_state, mesh=mesh,
                   batch_axis=batch_axis, head_axis=head_axis, chunk_size=chunk_size)
