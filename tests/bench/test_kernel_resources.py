"""The GPU kernels compile for an H100 (sm_90) with Triton on this CPU: every kernel of the forward
and backward at the anchor head size (bf16, K = V = 128, GPU block sizes), within the GPU's
shared memory and register file."""
import jax.numpy as jnp

from sleep_jax.bench.kernel_resources import SHARED_LIMIT, kernel_resources

KERNELS = ["gdr_wy_prep", "gdr_recurrence", "gdr_output", "gdr_reverse_recurrence", "gdr_chunk_gradients"]


def test_every_kernel_compiles_for_sm90_at_the_anchor_head_size():
    rows = kernel_resources(1, 256, 2, 128, 128, jnp.bfloat16)
    assert [row["kernel"] for row in rows] == KERNELS  # the backward's recomputed forward: once
    for row in rows:
        assert "error" not in row, row
        assert 0 < row["registers"] <= 255, row
        assert 0 < row["shared_bytes"] <= SHARED_LIMIT[90], row
        assert row["num_warps"] == 4 and row["num_stages"] == 2  # block_sizes.BLOCK_SIZES["gpu"]
