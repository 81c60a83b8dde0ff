"""python -m sleep_jax.convert: hub checkpoint -> run directory -> hub checkpoint, bit-exact."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from sleep_jax import convert, hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_hub_checkpoint(path):
    """A tiny qwen3_5_text checkpoint written by our own exporter (no torch needed)."""
    config = hf.model_config({
        "model_type": "qwen3_5_text", "vocab_size": 31, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"], "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 8, "linear_num_key_heads": 1, "linear_num_value_heads": 2,
        "linear_key_head_dim": 8, "linear_value_head_dim": 4, "linear_conv_kernel_dim": 4, "hidden_act": "silu",
        "rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5}})
    model, rng = hf.abstract_model(config), np.random.default_rng(0)
    for _, param in nnx.iter_graph(model):
        if isinstance(param, nnx.Param):
            param.set_value(rng.standard_normal(param.get_value().shape).astype(np.float32))
    hf.save_pretrained(model, str(path), base_config={"eos_token_id": 3})


def test_import_then_export_round_trips_bit_exact(tmp_path):
    from safetensors.numpy import load_file
    tiny_hub_checkpoint(tmp_path / "hub")
    (tmp_path / "hub" / "tokenizer.json").write_text("{}")
    config = convert.import_checkpoint(str(tmp_path / "hub"), str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "model.json").read_text())["pattern"] == config.pattern == "GA"
    convert.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "back"))
    before, after = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("hub", "back"))
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert hf.read_hub_config(str(tmp_path / "back"))["eos_token_id"] == 3
    assert (tmp_path / "back" / "tokenizer.json").exists()
    with pytest.raises(ValueError, match=r"^--out='.*back': not empty \(3 entries\)"):
        convert.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "back"))
    (tmp_path / "back" / "stale.safetensors").write_text("")
    convert.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "back"), overwrite=True)
    assert not (tmp_path / "back" / "stale.safetensors").exists()
    assert [convert.model_dir_kind(str(tmp_path / d), "--dir") for d in ("hub", "run")] == ["hub", "convert"]
    with pytest.raises(ValueError, match=r"^--dir='.*hub/tokenizer.json': no config.json \(a hub checkpoint or"):
        convert.model_dir_kind(str(tmp_path / "hub" / "tokenizer.json"), "--dir")
    loaded, imported = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in
                        (convert.load_run(str(tmp_path / "run")), hf.from_pretrained(str(tmp_path / "hub"))))
    assert len(loaded) == len(imported)
    for a, b in zip(loaded, imported):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_checkpoint_round_trips_through_its_index(tmp_path):
    """Small shards force model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
    tiny_hub_checkpoint(tmp_path / "hub")
    model = hf.from_pretrained(str(tmp_path / "hub"))
    hf.save_pretrained(model, str(tmp_path / "sharded"), max_shard_bytes=4096)
    index = json.loads((tmp_path / "sharded" / hf.INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "sharded" / hf.WEIGHTS_FILE).exists()
    for a, b in zip(*(jax.tree.leaves(nnx.state(m, nnx.Param)) for m in
                      (model, hf.from_pretrained(str(tmp_path / "sharded"))))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tokenizer_loads_the_directory_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tokenizer = Tokenizer(models.WordLevel({"sleep": 0, "wake": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert hf.tokenizer(str(tmp_path)).encode("wake sleep dream").ids == [1, 0, 2]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        hf.tokenizer(str(tmp_path / "missing"))


def test_the_command_is_quiet_on_a_cpu_and_a_truncated_file_is_one_line(tmp_path):
    """No JAX_PLATFORMS: the command itself picks the CPU (no libtpu error) and keeps orbax's INFO
    lines off stderr; a truncated safetensors file is one line naming it, and no --out is left."""
    tiny_hub_checkpoint(tmp_path / "hub")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
    weights = (tmp_path / "hub" / "model.safetensors").read_bytes()
    (tmp_path / "bad" / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    good, bad = (subprocess.Popen([sys.executable, "-m", "sleep_jax.convert", f"--hf_dir={tmp_path / d}",
                                   f"--out={tmp_path / ('out_' + d)}"], cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for d in ("hub", "bad"))
    (out, err), (_, bad_err) = good.communicate(timeout=300), bad.communicate(timeout=300)
    assert good.returncode == 0 and err == "" and json.loads(out)["to_hf"] is False, err[-3000:]
    assert bad.returncode == 1 and bad_err.count("\n") == 1, bad_err[-3000:]
    assert bad_err.startswith(f"--hf_dir={tmp_path / 'bad'}: {tmp_path / 'bad' / 'model.safetensors'}: "
                              "not a readable safetensors file"), bad_err
    assert not (tmp_path / "out_bad").exists()
