"""bench.memory: a fine-tuning recipe's training step compiled for a TPU slice through libtpu's
compile-only client, with no weights read (the checkpoint directory holds config.json and the
tokenizer, no safetensors)."""
import json
import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sleep_jax.bench.memory import out_of_memory, table
from sleep_jax.bench.tpu_compile import tpu_device

from ..tasks.util import write_tiny_tokenizer
from ..test_main import REPO


@pytest.mark.parametrize("batch, accum", [(8, 1), (16, 2)])
def test_tiny_recipe_step_compiles_for_tpu_v5e_without_weights(tmp_path, batch, accum):
    """(8, 1): the recipe's batch; (16, 2): two micro-batches of 8 rows (train.grad_accum_steps;
    16 = 2 x 8 local test devices, which validate also checks)."""
    from jax.experimental import topologies
    write_tiny_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen3_5_text", "vocab_size": 320, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"],
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "linear_num_key_heads": 1,
        "linear_num_value_heads": 2, "linear_key_head_dim": 8, "linear_value_head_dim": 4,
        "linear_conv_kernel_dim": 4, "hidden_act": "silu",
        "rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5}}))
    config = runpy.run_path(os.path.join(REPO, "configs", "gsm_finetune.py"))["get_config"]("tiny")
    config.init.hf_dir = str(tmp_path)
    config.train.update(batch_size=batch, grad_accum_steps=accum)
    devices = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
    (row,) = table(config, {"tpu:v5e:2x2": (devices, False)}, ["1"], ["pass"])
    assert "error" not in row, row
    assert row["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and not row["estimate"]
    assert (row["batch"], row["seq_len"], row["window"]) == (batch, 256, 64)
    assert (row["grad_accum_steps"], row["micro_batch"]) == (accum, 8)
    # Replicated over data: every device holds all parameters (float32) and the optimiser state
    # of the trainable ones (the last stage trains everything).
    assert row["param_bytes"] > 0 and row["optimizer_bytes"] > row["param_bytes"]
    assert row["peak_bytes"] >= row["activation_bytes"] > 0


def test_out_of_memory_reads_xla_tpu_message_in_gib():
    """A program holding 20e9 bytes on one v5e chip (16 GiB) fails to compile; the row's
    activation and HBM bytes come from the message, whose "G" are GiB."""
    sharding = NamedSharding(Mesh(np.array([tpu_device("v5e:2x2")]), ("x",)), P())
    program = jax.jit(lambda x: jnp.zeros((5 * 10**9,), jnp.float32) + x, out_shardings=sharding)
    with pytest.raises(Exception, match="RESOURCE_EXHAUSTED") as failed:
        program.lower(jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding)).compile()
    message = str(failed.value)
    row = out_of_memory(message)
    assert abs(row["activation_bytes"] - 20e9) < 0.01 * 2**30, message
    assert 15 * 2**30 < row["hbm_bytes"] <= 16 * 2**30, message
    assert out_of_memory("INTERNAL: something else") == {}
