"""Hub checkpoint <-> run directory.

    python -m sleep_jax.convert --hf_dir=DIR --out=RUN_DIR            # import
    python -m sleep_jax.convert --to_hf --run_dir=RUN_DIR --out=DIR   # export (safetensors)

A run directory holds
- `model.json`: the `model` block of a run config (ModelConfig fields, 1:1), which the main job
  fine-tunes from;
- `params/`: the parameters as an orbax checkpoint (a pure dict in `nnx.state` layout; orbax
  writes a temporary directory and renames it, so a crash leaves no half checkpoint);
- `hub/`: the hub `config.json` and tokenizer files, kept for the export.

A missing or unreadable input (a truncated safetensors file) stops with one line naming the flag
and the file, and an `--out` the command created is removed.
"""
import dataclasses
import json
import os
import shutil
import time

import jax
from absl import app, flags
from flax import nnx

from sleep_jax import cli, hf
from sleep_jax.files import write_text_atomic
from sleep_jax.model import HybridModel, ModelConfig

MODEL_FILE, PARAMS_DIR, HUB_DIR = "model.json", "params", "hub"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "generation_config.json", "chat_template.jinja")


def _checkpointer():
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer()


def import_checkpoint(hf_dir: str, run_dir: str, **overrides) -> ModelConfig:
    """Write hub checkpoint `hf_dir` as a run directory; returns its ModelConfig."""
    model = hf.from_pretrained(hf_dir, **overrides)
    os.makedirs(os.path.join(run_dir, HUB_DIR), exist_ok=True)
    for name in (hf.CONFIG_FILE, *TOKENIZER_FILES):
        if os.path.exists(os.path.join(hf_dir, name)):
            shutil.copy2(os.path.join(hf_dir, name), os.path.join(run_dir, HUB_DIR, name))
    with _checkpointer() as checkpointer:
        checkpointer.save(os.path.abspath(os.path.join(run_dir, PARAMS_DIR)),
                          nnx.state(model, nnx.Param).to_pure_dict(), force=True)
        checkpointer.wait_until_finished()
    write_text_atomic(os.path.join(run_dir, MODEL_FILE), json.dumps(dataclasses.asdict(model.config), indent=2))
    return model.config


def load_run(run_dir: str) -> HybridModel:
    """The model of a run directory written by `import_checkpoint`."""
    with open(os.path.join(run_dir, MODEL_FILE)) as f:
        config = ModelConfig(**json.load(f))
    model = hf.abstract_model(config)
    state = nnx.state(model, nnx.Param)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.to_pure_dict())
    with _checkpointer() as checkpointer:
        state.replace_by_pure_dict(checkpointer.restore(os.path.abspath(os.path.join(run_dir, PARAMS_DIR)), abstract))
    nnx.update(model, state)
    return model


def export_checkpoint(run_dir: str, hf_dir: str) -> None:
    """Write the run directory's model as a hub checkpoint (safetensors + config + tokenizer)."""
    model = load_run(run_dir)
    hub = os.path.join(run_dir, HUB_DIR)
    base = hf.read_hub_config(hub) if os.path.exists(os.path.join(hub, hf.CONFIG_FILE)) else None
    hf.save_pretrained(model, hf_dir, base_config=base)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(hub, name)):
            shutil.copy2(os.path.join(hub, name), os.path.join(hf_dir, name))


_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hub checkpoint directory to import (config.json + *.safetensors).")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory to export (with --to_hf).")
_OUT = flags.DEFINE_string("out", None, "Output: a run directory (import) or a hub directory (--to_hf).")
_TO_HF = flags.DEFINE_bool("to_hf", False, "Export --run_dir to a hub checkpoint in --out.")


def main(argv):
    del argv  # cli.run: none left
    if _OUT.value is None:
        raise app.UsageError("--out is required")
    start = time.perf_counter()
    if _TO_HF.value:
        if _RUN_DIR.value is None:
            raise app.UsageError("--to_hf needs --run_dir")
        source, flag = _RUN_DIR.value, "--run_dir"
    else:
        if _HF_DIR.value is None:
            raise app.UsageError("--hf_dir is required (or --to_hf with --run_dir)")
        source, flag = _HF_DIR.value, "--hf_dir"
    created = not os.path.exists(_OUT.value)
    try:
        if _TO_HF.value:
            export_checkpoint(source, _OUT.value)
        else:
            import_checkpoint(source, _OUT.value)
    except (ValueError, OSError) as error:  # a missing or unreadable file, a format not understood
        if created:
            shutil.rmtree(_OUT.value, ignore_errors=True)  # nothing half-written left behind
        raise app.UsageError(f"{flag}={source}: {error}") from None
    print(json.dumps({"from": source, "to": _OUT.value, "to_hf": _TO_HF.value,
                      "seconds": round(time.perf_counter() - start, 3)}))


if __name__ == "__main__":
    cli.run(main)
