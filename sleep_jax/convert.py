"""Hub checkpoint <-> run directory, and the model directories every command reads.

    python -m sleep_jax.convert --hf_dir=DIR --out=RUN_DIR                         # import
    python -m sleep_jax.convert --to_hf --run_dir=DIR --out=HUB_DIR [--overwrite]  # export (safetensors)

A model directory is any of three kinds, and every command that reads a model takes all three
(`sleep_jax.generate --workdir`, `sleep_jax.main --mode=eval --workdir`, `--to_hf --run_dir`,
`sleep_jax.main --config.init.hf_dir`); `model_dir_kind` tells them apart:

- "hub": a Hugging Face checkpoint: `config.json` naming a `model_type`, `*.safetensors`,
  tokenizer files;
- "convert": what `--hf_dir` writes: `model.json` (the `model` block of a run config, ModelConfig
  fields 1:1), `params/` (the parameters as an orbax checkpoint: a pure dict in `nnx.state`
  layout, written to a temporary directory and renamed, so a crash leaves no half checkpoint) and
  `hub/` (the hub `config.json` and tokenizer files, kept for the export);
- "run": a `sleep_jax.main` run, trained from scratch or fine-tuned: `config.json` holding the
  run's config blocks (`model`, `task`, ...) and `checkpoints/` (its newest readable one is read).
  A fine-tuned run's hub config and tokenizer are those of its `init.hf_dir` (`hub_files_dir`).

Only a run knows a task and a sleep setting: `generate` from a hub or convert directory reads the
prompt with its tokenizer (`hub_files_dir`), and `--mode=eval` needs `--config` naming the task.
The export writes the model as its family's hub checkpoint (config.json, safetensors, the
tokenizer files) that transformers loads for the families it knows; a model the format cannot
hold (a block kind the family has not, see `hf.families.exportable`) is one line saying so, and
the run directory stays its portable form. `--out` must be empty or absent unless `--overwrite`.

A missing or unreadable input (a truncated safetensors file) stops with one line naming the flag
and the file, and leaves `--out` as it was (`output_dir`).
"""
import contextlib
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
from sleep_jax.hf.families import exportable
from sleep_jax.model import HybridModel, ModelConfig

MODEL_FILE, PARAMS_DIR, HUB_DIR = "model.json", "params", "hub"
RUN_CONFIG = "config.json"   # a run's record (train.record.RUN_CONFIG); a hub checkpoint's config has this name too
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "generation_config.json", "chat_template.jinja")
KINDS = ("hub", "convert", "run")


def _checkpointer():
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer()


def model_dir_kind(path: str, flag: str) -> str:
    """"hub", "convert" or "run" (module docstring) for directory `path`; a ValueError naming
    `flag` (the flag or key that gave the path) and the files looked for when it is none."""
    if os.path.exists(os.path.join(path, MODEL_FILE)):
        return "convert"
    config_file = os.path.join(path, RUN_CONFIG)
    if os.path.exists(config_file):
        try:
            with open(config_file) as f:
                config = json.load(f)
        except ValueError as error:
            raise ValueError(f"{flag}={path!r}: {config_file} is not JSON ({error})") from None
        if isinstance(config, dict) and "model_type" in config:
            return "hub"
        if isinstance(config, dict) and isinstance(config.get("model"), dict):
            return "run"
        raise ValueError(f"{flag}={path!r}: {config_file} has neither a model_type (a hub checkpoint) nor a "
                         f"model block (a sleep_jax.main run)")
    raise ValueError(f"{flag}={path!r}: no {RUN_CONFIG} (a hub checkpoint or a sleep_jax.main run) or {MODEL_FILE} "
                     f"(a sleep_jax.convert directory) there")


def hub_files_dir(path: str, flag: str) -> str | None:
    """The directory holding model directory `path`'s hub config.json and tokenizer files: a hub
    checkpoint itself, a convert directory's hub/, a run's `init.hf_dir`'s (followed); None for
    a run trained from scratch."""
    kind = model_dir_kind(path, flag)
    if kind == "hub":
        return path
    if kind == "convert":
        return os.path.join(path, HUB_DIR)
    from sleep_jax.train import record as record_lib
    init = record_lib.load_run_config(path).init.hf_dir
    return hub_files_dir(init, f"{os.path.join(path, RUN_CONFIG)}: init.hf_dir") if init else None


def load_model(path: str, flag: str) -> HybridModel:
    """The model of model directory `path` (any kind; a run's newest readable checkpoint)."""
    kind = model_dir_kind(path, flag)
    if kind == "hub":
        return hf.from_pretrained(path)
    if kind == "convert":
        return load_run(path)
    from sleep_jax.train.loop import restore_run
    return restore_run(path)[0]


def import_checkpoint(hf_dir: str, run_dir: str, *, overwrite: bool = False, **overrides) -> ModelConfig:
    """Write hub checkpoint `hf_dir` as a convert directory `run_dir` (empty or absent unless
    `overwrite`; `output_dir`); returns its ModelConfig."""
    check_out_dir(run_dir, overwrite)
    model = hf.from_pretrained(hf_dir, **overrides)
    with output_dir(run_dir) as out:
        os.makedirs(os.path.join(out, HUB_DIR))
        for name in (hf.CONFIG_FILE, *TOKENIZER_FILES):
            if os.path.exists(os.path.join(hf_dir, name)):
                shutil.copy2(os.path.join(hf_dir, name), os.path.join(out, HUB_DIR, name))
        with _checkpointer() as checkpointer:
            checkpointer.save(os.path.abspath(os.path.join(out, PARAMS_DIR)),
                              nnx.state(model, nnx.Param).to_pure_dict(), force=True)
            checkpointer.wait_until_finished()
        write_text_atomic(os.path.join(out, MODEL_FILE), json.dumps(dataclasses.asdict(model.config), indent=2))
    return model.config


def read_model_config(run_dir: str) -> ModelConfig:
    """The ModelConfig of a convert directory (its model.json)."""
    with open(os.path.join(run_dir, MODEL_FILE)) as f:
        return ModelConfig(**json.load(f))


def load_run(run_dir: str) -> HybridModel:
    """The model of a convert directory written by `import_checkpoint`."""
    model = hf.abstract_model(read_model_config(run_dir))
    state = nnx.state(model, nnx.Param)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.to_pure_dict())
    with _checkpointer() as checkpointer:
        state.replace_by_pure_dict(checkpointer.restore(os.path.abspath(os.path.join(run_dir, PARAMS_DIR)), abstract))
    nnx.update(model, state)
    return model


def check_out_dir(out: str, overwrite: bool) -> None:
    """`--out` must be absent or empty, unless `--overwrite` (then `output_dir` replaces it)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out={out!r}: a file, not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ValueError(f"--out={out!r}: not empty ({len(os.listdir(out))} entries); choose a new directory or "
                         f"pass --overwrite to replace it")


@contextlib.contextmanager
def output_dir(out: str):
    """A fresh directory beside `out` to write into; on success it replaces `out` (renamed over
    it), on an error it is removed. So a failed import or export leaves `out` as it was, and
    nothing half-written."""
    partial = f"{os.path.normpath(out)}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.rename(partial, out)


def export_checkpoint(run_dir: str, hf_dir: str, *, overwrite: bool = False, flag: str = "--run_dir") -> None:
    """Write the model of model directory `run_dir` (any kind, e.g. a fine-tuned run) as a hub
    checkpoint in `hf_dir` (safetensors + config + tokenizer files), which must be empty or absent
    unless `overwrite`. ValueError (one line) for a model its family's hub format cannot hold."""
    check_out_dir(hf_dir, overwrite)
    model = load_model(run_dir, flag)
    exportable(model.config)       # before anything is written
    hub = hub_files_dir(run_dir, flag)
    if hub is not None and not os.path.exists(os.path.join(hub, hf.CONFIG_FILE)):
        raise ValueError(f"{flag}={run_dir!r}: no {os.path.join(hub, hf.CONFIG_FILE)} (the hub config the export "
                         f"starts from)")
    base = hf.read_hub_config(hub) if hub is not None else None
    with output_dir(hf_dir) as out:
        hf.save_pretrained(model, out, base_config=base)
        for name in TOKENIZER_FILES:
            if hub is not None and os.path.exists(os.path.join(hub, name)):
                shutil.copy2(os.path.join(hub, name), os.path.join(out, name))


_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hub checkpoint directory to import (config.json + *.safetensors).")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory to export (with --to_hf).")
_OUT = flags.DEFINE_string("out", None, "Output: a run directory (import) or a hub directory (--to_hf).")
_TO_HF = flags.DEFINE_bool("to_hf", False, "Export --run_dir to a hub checkpoint in --out.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.")


def main(argv):
    del argv  # cli.run: none left
    if _OUT.value is None:
        raise app.UsageError("--out is required")
    from sleep_jax.train.errors import RunStopped
    start = time.perf_counter()
    if _TO_HF.value:
        if _RUN_DIR.value is None:
            raise app.UsageError("--to_hf needs --run_dir")
        source, flag = _RUN_DIR.value, "--run_dir"
    else:
        if _HF_DIR.value is None:
            raise app.UsageError("--hf_dir is required (or --to_hf with --run_dir)")
        source, flag = _HF_DIR.value, "--hf_dir"
    try:
        if _TO_HF.value:
            export_checkpoint(source, _OUT.value, overwrite=_OVERWRITE.value, flag=flag)
        else:
            import_checkpoint(source, _OUT.value, overwrite=_OVERWRITE.value)
    except (ValueError, OSError, RunStopped) as error:  # a bad directory, file or model; --out untouched
        message = " ".join(str(error).split())
        raise app.UsageError(message if message.startswith("--") else f"{flag}={source}: {message}") from None
    print(json.dumps({"from": source, "to": _OUT.value, "to_hf": _TO_HF.value,
                      "seconds": round(time.perf_counter() - start, 3)}))


if __name__ == "__main__":
    cli.run(main)
