"""Compile the Pallas delta-rule kernels for a TPU without one (`python -m sleep_jax.bench.delta_rule
--tpu_compile=v5e:2x2`).

libtpu (installed with `jax[tpu]`) provides a compile-only client for a named TPU topology: jax
lowers `pallas_gated_delta_rule(backend="tpu")` to Mosaic TPU and the real XLA:TPU compiler
compiles it, checking what only the TPU compiler checks (Mosaic's layouts and tiling, VMEM
capacity). Nothing runs, so nothing is timed or compared numerically.
"""
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sleep_jax.bench.programs import abstract_inputs, failure, forward_and_gradient

MOSAIC_CALL = "tpu_custom_call"


def tpu_device(topology: str):
    """The first device of a compile-only TPU topology such as "v5e:2x2" or "v4:2x2x1"."""
    from jax.experimental import topologies  # needs libtpu only when called

    try:
        return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices[0]
    except Exception as exc:  # noqa: BLE001 -- re-raised with what to do
        raise ValueError(f"tpu_compile: no compile-only TPU topology {topology!r} ({exc}); it needs "
                         "libtpu matching jax (pip install 'jax[tpu]') and a name like v5e:2x2, "
                         "v6e:2x2, v4:2x2x1 or v5p:2x2x1") from None


def tpu_compile(topology, B, T, H, K, V, dtype, sizes=None, *, chunk_size=64):
    """Two dicts, for the forward and for forward+backward: `compiled` (bool), `seconds`,
    `mosaic_kernels` (Mosaic calls left in the compiled program), or `error`."""
    sharding = NamedSharding(Mesh(np.array([tpu_device(topology)]), ("x",)), P())
    args = abstract_inputs(B, T, H, K, V, dtype, sharding)
    forward, gradient = forward_and_gradient("tpu", sizes=sizes, chunk_size=chunk_size)
    rows = []
    for name, fn in (("forward", forward), ("forward+backward", gradient)):
        start = time.perf_counter()
        try:
            compiled = jax.jit(fn).trace(*args).lower().compile()
        except Exception as exc:  # noqa: BLE001 -- reported in the row
            rows.append(dict(program=name, compiled=False, error=failure(exc)))
            continue
        rows.append(dict(program=name, compiled=True,
                         seconds=round(time.perf_counter() - start, 2),
                         mosaic_kernels=compiled.as_text().count(MOSAIC_CALL)))
    return rows
