"""The static settings shared by every delta-rule kernel, block specs of per-token arrays, and the
one place `pallas_call` is made.

Kernel-side arrays (made by `sleep_jax.ops.delta_rule.pallas.api`): N = batch * value heads
(head n is batch n // HV, value head n % HV), Tp = T padded to a multiple of the chunk C,
NT = Tp // C. Per-token arrays, in one of two layouts (`KernelConfig.layout`):
  "tokens_first" [B, Tp, HV, D]: the caller's layout, no transpose (GPU; blocks squeeze HV);
  "heads_first"  [N, Tp, D]:     head-major copy (TPU: a block's last two dims must be tile-legal).
  w (D = K) and v, u, v_new, o (D = V) in the input dtype; gc, beta (D = 1) float32
  (gc: in-chunk cumulative log gate); d_v_new float32. The inputs q, k (D = K) have H key heads
  ([B, Tp, H, K] or [B*H, Tp, K]); their block specs (`token_spec(..., key_heads=True)`) send
  value head n to key head n // (HV // H) of the same batch row, so they are never copied per
  value head. Kernel outputs (dq, dk included) are per value head.
Per-chunk states h, dh [N, NT * K, V] in the input dtype (chunk c at rows c*K .. c*K+K-1);
initial/final state and its gradient [N, K, V] float32. Kernels see every block as 2-D.
"""
import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from sleep_jax.ops.delta_rule.pallas import chunk_math


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
    layout: str         # "tokens_first" or "heads_first" (module docstring)
    heads: int          # HV: value heads (to split N into batch and head in "tokens_first")
    key_heads: int      # H: key heads of q and k (HV is a multiple of H)
    bf16_inverse_precision: str = "highest"  # see chunk_math.inverse_precision
    num_warps: int | None = None
    num_stages: int | None = None

    @property
    def group(self) -> int:
        """Value heads per key head."""
        return self.heads // self.key_heads

    @property
    def matmul_dtype(self):
        return jnp.dtype(self.mm_dtype)

    @property
    def inverse_precision(self):
        return chunk_math.inverse_precision(self.mm_dtype, self.bf16_inverse_precision)


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


def token_dims(x, cfg: KernelConfig):
    """(N, Tp, D) of a per-value-head array in either layout."""
    if cfg.layout == "heads_first":
        return x.shape
    b, tp, hv, d = x.shape
    return b * hv, tp, d


def token_shape(n, tp, d, dtype, cfg: KernelConfig):
    """ShapeDtypeStruct of a per-token array of N heads, Tp tokens, width D."""
    if cfg.layout == "heads_first":
        return jax.ShapeDtypeStruct((n, tp, d), dtype)
    return jax.ShapeDtypeStruct((n // cfg.heads, tp, cfg.heads, d), dtype)


def token_spec(rows, width, index_map, cfg: KernelConfig, *, key_heads: bool = False):
    """BlockSpec of a [rows, width] block of a per-token array.

    index_map(*grid_ids) -> (value head n, row block, column block), whatever the layout.
    key_heads: the array holds the H key heads (q, k); value head n reads key head
    n // (HV // H) of its batch row.
    """
    hv, group = cfg.heads, cfg.group

    def head_index(n):  # -> (batch row, head within the row) of the array's head axis
        batch, head = jax.lax.div(n, hv), jax.lax.rem(n, hv)
        return (batch, jax.lax.div(head, group)) if key_heads else (batch, head)

    if cfg.layout == "heads_first":
        heads = cfg.key_heads if key_heads else hv

        def heads_first(*ids):
            n, row_block, col_block = index_map(*ids)
            batch, head = head_index(n)
            return batch * heads + head, row_block, col_block

        return pl.BlockSpec((None, rows, width), heads_first)

    def tokens_first(*ids):
        n, row_block, col_block = index_map(*ids)
        batch, head = head_index(n)
        return batch, row_block, head, col_block

    return pl.BlockSpec((None, rows, None, width), tokens_first)
