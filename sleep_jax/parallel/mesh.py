"""The device mesh: three named axes, ``data``, ``fsdp`` and ``tensor``, sized from config.

- ``data``: pure data parallelism (parameters replicated, batch split).
- ``fsdp``: the batch is split *and* parameters are sharded along their ``embed`` dimension
  (fully sharded data parallelism: weights are all-gathered per use by XLA).
- ``tensor``: parameters sharded along ``mlp``/``heads``/``kv_heads``/``vocab`` (tensor parallel).

One CPU device is the degenerate mesh ``(1, 1, 1)``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_config: Mapping[str, int], device_count: int) -> tuple[int, int, int]:
    """Resolves the ``mesh`` config block to a shape over ``device_count`` devices.

    Each of ``data``, ``fsdp``, ``tensor`` is a positive int; at most one may be ``-1``, meaning
    "all remaining devices". The product must equal ``device_count``.

    Raises:
      ValueError naming the ``mesh.<axis>`` key at fault.
    """
    unknown = sorted(set(mesh_config) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh.{unknown[0]}: unknown mesh axis; the axes are {MESH_AXES}")
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    fill = [axis for axis, size in sizes.items() if size == -1]
    for axis, size in sizes.items():
        if size < 1 and size != -1:
            raise ValueError(f"mesh.{axis}={size}: a mesh axis size must be >= 1 (or -1 for 'the rest')")
    if len(fill) > 1:
        raise ValueError(f"mesh.{fill[1]}=-1: only one mesh axis may be -1 (also mesh.{fill[0]})")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if device_count % fixed:
            raise ValueError(
                f"mesh.{fill[0]}=-1: the other axes ({fixed} devices) do not divide the "
                f"{device_count} available devices")
        sizes[fill[0]] = device_count // fixed
    elif fixed != device_count:
        named = ", ".join(f"mesh.{axis}={sizes[axis]}" for axis in MESH_AXES)
        raise ValueError(
            f"{named}: the mesh has {fixed} devices but {device_count} are available; "
            "the product of mesh.data, mesh.fsdp and mesh.tensor must equal the device count")
    return tuple(sizes[axis] for axis in MESH_AXES)


def make_mesh(mesh_config: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A ``jax.sharding.Mesh`` with axes ``("data", "fsdp", "tensor")`` from the ``mesh`` block.

    ``devices`` defaults to all devices (of all processes); pass a subset, e.g. ``jax.devices()[:1]``,
    for a smaller mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    # Auto axes: XLA's sharding propagation places intermediates; we pin inputs and outputs.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)
