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


def test_a_failed_compile_names_the_compiler_and_the_version_known_to_work(monkeypatch):
    from sleep_jax.bench import kernel_resources as resources

    monkeypatch.setattr(resources, "lower_kernels", lambda *args: None)
    monkeypatch.setattr(resources, "triton_calls", lambda lowered: [("gdr_output", "not a module", {
        "num_warps": 4, "num_stages": 2, "grid": [1, 1, 1]})])
    (row,) = resources.kernel_resources(1, 64, 1, 64, 64, jnp.bfloat16)
    import triton
    assert f"compiled with triton {triton.__version__}" in row["error"]
    assert f"known to work: triton {resources.KNOWN_GOOD_TRITON}" in row["error"]
