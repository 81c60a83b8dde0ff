"""The static settings shared by every delta-rule kernel and the one place `pallas_call` is made.

Kernel-side layout (made by `sleep_jax.ops.delta_rule.pallas.api`): N = batch * value heads,
Tp = T padded to a multiple of the chunk C, NT = Tp // C.
  q, k, w [N, Tp, K] and v, u, v_new, o [N, Tp, V] in the input dtype;
  gc, beta [N, Tp, 1] float32 (gc: in-chunk cumulative log gate);
  per-chunk states h, dh [N, NT * K, V] in the input dtype (chunk c at rows c*K .. c*K+K-1);
  initial/final state and its gradient [N, K, V] float32.
"""
import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static (hashable) settings of one kernel pipeline call."""
    chunk: int          # C: tokens per chunk (16, 32 or 64)
    block_v: int        # value tile width (divides V)
    scale: float        # multiplier of q
    mm_dtype: str       # dtype of matmul operands ("float32" or "bfloat16"): the input dtype
    recurrence: str     # "loop" or "grid" (see block_sizes.py)
    backend: str        # "cpu", "gpu" or "tpu"
    interpret: bool     # run the kernels in the Pallas interpreter
    num_warps: int | None = None
    num_stages: int | None = None

    @property
    def matmul_dtype(self):
        return jnp.dtype(self.mm_dtype)


def call(kernel, cfg: KernelConfig, *, grid, in_specs, out_specs, out_shape, sequential_last=False,
         name):
    """`pl.pallas_call` with the backend's compiler parameters.

    sequential_last: the last grid axis carries data from one step to the next (TPU "arbitrary");
    all other axes are parallel.
    """
    params = None
    if not cfg.interpret:
        if cfg.backend == "gpu":
            params = pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        elif cfg.backend == "tpu":
            semantics = ["parallel"] * len(grid)
            if sequential_last:
                semantics[-1] = "arbitrary"
            params = pltpu.CompilerParams(dimension_semantics=tuple(semantics))
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, compiler_params=params, interpret=cfg.interpret,
                          name=name)


def shape_of(x, dtype=None):
    return jax.ShapeDtypeStruct(x.shape if hasattr(x, "shape") else x, dtype or x.dtype)
