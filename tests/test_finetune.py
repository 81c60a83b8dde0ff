"""Sleep fine-tuning end to end (subprocesses): a tiny random "pretrained" Qwen3.5 hub checkpoint
with its own tokenizer -> sleep_jax.convert -> configs/gsm_finetune.py:tiny through both stages
(stage 1 only the inserted block, hard eviction: every other parameter bit-identical; stage 2 the
whole model, sliding eviction) -> eval.json by op count; then a run killed in stage 2 resumes and
reproduces the uninterrupted losses. Bad fine-tuning configs stop with one line naming the key."""
import json
import os
import shutil
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from sleep_jax import convert, hf
from sleep_jax.hf.insert import insert_blocks
from sleep_jax.tasks.vocab import TokenizerVocab
from sleep_jax.train import stages as stages_lib
from sleep_jax.train.errors import ConfigError
from sleep_jax.train.loop import eval_config, evaluate_checkpoint, setup_stages
from sleep_jax.train.metrics import read_metrics

from .tasks.util import write_tiny_tokenizer
from .test_main import REPO, _finished_checkpoints, _start, _wait

# Stage 1: 1 epoch of 32 problems at batch 8 = steps 1-4; stage 2: 2 epochs = steps 5-12.
STAGE_1_END, LAST = 4, 12
TINY = ["--config=configs/gsm_finetune.py:tiny", "--config.train.keep_checkpoints=10",
        "--config.task.eval_examples=8"]


def tiny_pretrained(path):
    """A tiny qwen3_5_text hub checkpoint (random weights, written by our exporter) with a
    word-level tokenizer.json; returns its directory."""
    write_tiny_tokenizer(path)
    config = hf.model_config({
        "model_type": "qwen3_5_text", "vocab_size": TokenizerVocab(str(path)).size,
        "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
        "layer_types": ["linear_attention", "full_attention"], "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 8, "linear_num_key_heads": 1,
        "linear_num_value_heads": 2, "linear_key_head_dim": 8, "linear_value_head_dim": 4,
        "linear_conv_kernel_dim": 4, "hidden_act": "silu",
        "rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5}})
    model, rng = hf.abstract_model(config), np.random.default_rng(0)
    for _, param in nnx.iter_graph(model):
        if isinstance(param, nnx.Param):
            param.set_value(0.1 * rng.standard_normal(param.get_value().shape).astype(np.float32))
    hf.save_pretrained(model, str(path), base_config={"eos_token_id": 1})
    return str(path)


def _saved_params(workdir, step):
    """{"blocks/0/mixer/w_q": array} of the checkpoint at ``step``."""
    with ocp.StandardCheckpointer() as reader:
        saved = reader.restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return {"/".join(str(k.key) for k in path if k.key != "value"): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(saved["params"])}


def test_two_stage_finetune_frozen_eval_and_resume(tmp_path):
    run_dir = str(tmp_path / "run")
    convert.import_checkpoint(tiny_pretrained(tmp_path / "hub"), run_dir)
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    _wait(_start(straight, f"--config.init.hf_dir={run_dir}", config=TINY), timeout=600)

    record = json.loads(open(os.path.join(straight, "config.json")).read())
    assert record["model"]["pattern"] == "GGA" and record["model"]["no_mlp_layers"] == [1]
    assert record["train"]["steps"] == LAST and record["task"]["tokenizer"] == os.path.join(run_dir, "hub")
    metrics = read_metrics(straight)
    assert sorted(metrics) == list(range(1, LAST + 1))
    assert [metrics[s]["stage"] for s in (1, STAGE_1_END, STAGE_1_END + 1, LAST)] == [1, 1, 2, 2]

    # Stage 1 trained the inserted block (layer 1) alone: everything else is the pretrained
    # model, bit for bit; stage 2 trained the rest too.
    pretrained = nnx.state(insert_blocks(convert.load_run(run_dir), (1,), "G"), nnx.Param).to_pure_dict()
    expected = {"/".join(str(k.key) for k in path): np.asarray(leaf)
                for path, leaf in jax.tree_util.tree_leaves_with_path(pretrained)}
    after_stage_1, after_stage_2 = _saved_params(straight, STAGE_1_END), _saved_params(straight, LAST)
    assert sorted(after_stage_1) == sorted(expected)
    for path, value in expected.items():
        if path.startswith("blocks/1/"):
            continue
        np.testing.assert_array_equal(after_stage_1[path], value, err_msg=path)
    assert not np.array_equal(after_stage_1["blocks/1/mixer/w_o"], expected["blocks/1/mixer/w_o"])
    assert not np.array_equal(after_stage_2["blocks/0/mixer/w_q"], expected["blocks/0/mixer/w_q"])

    result = json.loads(open(os.path.join(straight, "eval.json")).read())
    assert set(result["by_difficulty"]) == {"ops=1", "ops=2"} and result["step"] == LAST

    _check_export_and_directories(tmp_path, run_dir, straight)

    # Evaluated mid-way, a stage-1 checkpoint is read with stage 1's optimiser state.
    early = str(tmp_path / "early")
    shutil.copytree(straight, early)
    for step in _finished_checkpoints(early):
        if step > STAGE_1_END:
            shutil.rmtree(os.path.join(early, "checkpoints", str(step)))
    assert evaluate_checkpoint(eval_config(early, None, {}), early)["step"] == STAGE_1_END

    # Killed in stage 2, the rerun resumes there and reproduces every loss.
    process = _start(killed, f"--config.init.hf_dir={run_dir}", config=TINY)
    deadline = time.time() + 600
    while max(_finished_checkpoints(killed), default=0) <= STAGE_1_END and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    resume_step = max(_finished_checkpoints(killed))
    assert STAGE_1_END < resume_step < LAST, resume_step
    out = _wait(_start(killed, f"--config.init.hf_dir={run_dir}", config=TINY), timeout=600)
    assert f"resuming from {os.path.join(killed, 'checkpoints')}/{resume_step} (stage 2)" in out
    assert {s: m["loss"] for s, m in read_metrics(killed).items()} == \
        {s: m["loss"] for s, m in metrics.items()}


def _check_export_and_directories(tmp_path, run_dir, finetuned):
    """The fine-tuned run exports to a hub checkpoint that transformers loads (its inserted
    MLP-free block as a zero MLP) with the fine-tuned weights: logits within 1e-4 of our forward
    (N = 1); a second export into it is refused. Every command takes the convert directory and
    the run: init.hf_dir (its architecture and tokenizer), generate (a convert directory reads a
    prompt with the hub tokenizer, needs a run for eval examples), --mode=eval (needs a task)."""
    import torch
    import transformers

    from sleep_jax import generate
    exported = str(tmp_path / "exported")
    convert.export_checkpoint(finetuned, exported)
    with pytest.raises(ValueError, match=r"^--out='.*exported': not empty .* pass --overwrite"):
        convert.export_checkpoint(finetuned, exported)
    assert sorted(os.listdir(exported)) == ["config.json", "model.safetensors", "tokenizer.json",
                                            "tokenizer_config.json"]
    reference = transformers.Qwen3_5ForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    model = convert.load_model(finetuned, "--run_dir")
    assert model.config.pattern == "GGA" and model.config.no_mlp_layers == (1,)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 40))
    with torch.no_grad():
        want = reference(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(hf.logits(model, tokens)), want, rtol=0, atol=1e-4)

    assert stages_lib.pretrained_dir_config(finetuned) == model.config
    assert stages_lib.tokenizer_dir(finetuned) == os.path.join(run_dir, "hub")
    _, sleep, task, config = generate.load_run(run_dir, passes=2)
    assert (sleep.passes, task.vocab.eos_id, config) == (2, 1, None)
    with pytest.raises(ValueError, match=r"^--workdir='[^']*': a convert directory has no task"):
        generate.load_run(run_dir, need_task=True)
    with pytest.raises(ConfigError, match=r"^--config: --workdir='[^']*' is a convert directory, which has "
                                          r"no task"):
        eval_config(run_dir, None, {})


def _config(*overrides):
    """configs/gsm_finetune.py:tiny with ``{"block.key": value}`` overrides."""
    import runpy
    config = runpy.run_path(os.path.join(REPO, "configs", "gsm_finetune.py"))["get_config"]("tiny")
    for path, value in overrides:
        block, key = path.split(".")
        config[block][key] = value
    return config


def _tiny(*overrides):
    """``_config(*overrides)`` resolved and set up (``setup_stages``: the checks of every stage)."""
    return setup_stages(stages_lib.resolve(_config(*overrides)))


def test_bad_finetune_configs_name_the_key(tmp_path):
    hub = tiny_pretrained(tmp_path / "hub")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"^init\.hf_dir='.*empty': no config\.json"):
        _tiny(("init.hf_dir", str(empty)))
    with pytest.raises(ConfigError, match=r"^stages\.window=\(64, 32\): the last stage's window "
                                          r"must be sleep\.window=64"):
        _tiny(("init.hf_dir", hub), ("stages.window", (64, 32)))
    with pytest.raises(ConfigError, match=r"^stages\.eviction=\('hard',\): has 1 entries, the "
                                          r"stage list has 2"):
        _tiny(("init.hf_dir", hub), ("stages.eviction", ("hard",)))
    with pytest.raises(ConfigError, match=r"^model\.d_model=64: init\.hf_dir=.* fixes the architecture"):
        _tiny(("init.hf_dir", hub), ("model.d_model", 64))
    # --config.model.d_model=128 is the default, but given on the command line it is refused too
    config = _config(("init.hf_dir", hub), ("model.d_model", 128))
    assert stages_lib.resolve(config).model.d_model == 16     # not given: the checkpoint's
    with pytest.raises(ConfigError, match=r"^model\.d_model=128: init\.hf_dir=.* fixes the architecture "
                                          r"\(d_model=16\); leave model\.d_model unset"):
        stages_lib.resolve(config, explicit_model_keys=("d_model",))
    with pytest.raises(ConfigError, match=r"^stages\.trainable=\('blocks/9/\*', '\*'\): stage 1's "
                                          r"filter 'blocks/9/\*' matches no parameter"):
        _tiny(("init.hf_dir", hub), ("stages.trainable", ("blocks/9/*", "*")))
    stages_lib.check_pretrained_weights(hub)
    weights = tmp_path / "hub" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])    # a truncated download: named, before the run
    with pytest.raises(ConfigError, match=rf"^init\.hf_dir='{hub}': {weights}: not a readable safetensors file"):
        stages_lib.check_pretrained_weights(hub)


def test_each_window_task_is_built_once(tmp_path, monkeypatch):
    """A run's task is built once per window its stages use (a dataset is tokenized once), and a
    stage window the task refuses is an error naming stages.window."""
    from sleep_jax import tasks

    hub = tiny_pretrained(tmp_path / "hub")
    built = []
    make = tasks.make
    monkeypatch.setattr(tasks, "make", lambda config: built.append(config.window) or make(config))
    exps = _tiny(("init.hf_dir", hub), ("stages.window", (32, 64)))
    assert sorted(built) == [32, 64]
    assert [exp.task.layout.window for exp in exps] == [32, 64]
    assert exps[0].config.train.steps == exps[-1].stage.last_step
    with pytest.raises(ConfigError, match=r"^stages\.window=\(0, 64\): entry 0 must be an int > 0"):
        _tiny(("init.hf_dir", hub), ("stages.window", (0, 64)))
    with pytest.raises(ConfigError, match=r"^stages\.window=\(8, 64\): stage 1: task\.window"):
        _tiny(("init.hf_dir", hub), ("stages.window", (8, 64)))
