"""The TPU kernels compile for a TPU v5e with the TPU compiler on this CPU (libtpu's compile-only
client): forward and forward+backward at the anchor head size (bf16, K = V = 128) and at an odd
float32 shape (T not a multiple of the chunk, K != V)."""
import jax.numpy as jnp
import pytest

from sleep_jax.bench.tpu_compile import tpu_compile


@pytest.mark.parametrize("T, K, V, dtype", [(512, 128, 128, jnp.bfloat16), (200, 128, 64, jnp.float32)],
                         ids=["anchor_head_bf16", "odd_f32"])
def test_forward_and_backward_compile_for_tpu_v5e(T, K, V, dtype):
    rows = tpu_compile("v5e:2x2", 1, T, 2, K, V, dtype)
    assert [row["program"] for row in rows] == ["forward", "forward+backward"]
    assert all(row["compiled"] for row in rows), rows
    # wy_prep, recurrence, output; the backward recomputes the first two, then 2 backward kernels
    # (the forward's output kernel is dead code when only gradients are asked for).
    assert [row["mosaic_kernels"] for row in rows] == [3, 4]


def test_tile_illegal_block_is_an_error_row_and_a_bad_topology_names_itself():
    rows = tpu_compile("v5e:2x2", 1, 256, 2, 128, 128, jnp.bfloat16, {"block_v": 64})
    assert not any(row["compiled"] for row in rows)
    assert all("divisible by 8 and 128" in row["error"] for row in rows)
    with pytest.raises(ValueError, match="v9z:2x2"):
        tpu_compile("v9z:2x2", 1, 64, 1, 16, 16, jnp.float32)
