"""Pretrained GDN hybrids from Hugging Face checkpoints: import, run, export.

    from sleep_jax import hf
    model = hf.from_pretrained(DIR)          # config.json + *.safetensors (sharded index too)
    logits = hf.logits(model, tokens)        # float32 [B, T, vocab], a plain causal forward
    hf.save_pretrained(model, OUT_DIR)       # safetensors + config.json that transformers loads
    tok = hf.tokenizer(DIR)                  # the directory's tokenizer.json (`tokenizers`)

Reading and writing use the `safetensors` numpy API: no torch at run time. Key names are the hub
format (what the models' own `save_pretrained` writes); `families.py` holds the architectures.
"""
import contextlib
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from sleep_jax.files import write_atomic, write_text_atomic
from sleep_jax.hf.families import FAMILIES, exportable, family
from sleep_jax.hf.tensors import open_safetensors
from sleep_jax.model import HybridModel, ModelConfig

SUPPORTED = tuple(sorted(FAMILIES))
CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
_MLP_PARTS = ("mlp", "mlp_norm", "mlp_out_norm")   # a block's feed-forward half (layers.block.Block)


def read_hub_config(path: str) -> dict:
    """The `config.json` of a checkpoint directory."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: no config.json in the checkpoint directory")
    with open(file) as f:
        return json.load(f)


def model_config(hub: dict, **overrides) -> ModelConfig:
    """The `ModelConfig` of a hub config dict (`overrides`: ModelConfig fields, e.g. dtype)."""
    return family(hub.get("model_type")).model_config(hub, **overrides)


def hub_tensor_files(path: str) -> dict[str, str]:
    """{hub key: safetensors file} of a checkpoint directory (the sharded index if there is one)."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            return {key: os.path.join(path, name) for key, name in json.load(f)["weight_map"].items()}
    files = sorted(name for name in os.listdir(path) if name.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors files")
    keys = {}
    for name in files:
        with open_safetensors(os.path.join(path, name)) as f:
            keys.update({key: os.path.join(path, name) for key in f.keys()})
    return keys


def _target(model, path):
    """(parameter, index or None) at an attribute path; a trailing int after the parameter
    selects one slice of its leading axis (one expert of a stacked expert weight)."""
    node = model
    for k, step in enumerate(path):
        if isinstance(node, nnx.Param):
            if k != len(path) - 1 or not isinstance(step, int):
                raise TypeError(f"{path}: only one leading-axis index may follow a parameter")
            return node, step
        node = node[step] if isinstance(step, int) else getattr(node, step)
    if not isinstance(node, nnx.Param):
        raise TypeError(f"{path} is not a parameter")
    return node, None


def abstract_model(config: ModelConfig) -> HybridModel:
    """The model with shapes only (no memory): `nnx.eval_shape` of its construction."""
    return nnx.eval_shape(lambda: HybridModel(config, rngs=nnx.Rngs(0)))


def from_pretrained(path: str, **overrides) -> HybridModel:
    """A `HybridModel` with the weights of the hub checkpoint directory `path`.

    `overrides` are ModelConfig fields (e.g. param_dtype="bfloat16", delta_rule_impl=...).
    Raises ValueError naming the key for a missing or extra tensor, and the key with both shapes
    for a mis-shaped one; an unsupported model_type lists the supported ones.
    """
    config = model_config(read_hub_config(path), **overrides)
    model = abstract_model(config)
    files = hub_tensor_files(path)
    maps = family(config.hf_model_type).tensor_maps(config)
    expected = {key for m in maps for key in m.hub_keys}
    extra = sorted(set(files) - expected)
    if extra:
        raise ValueError(f"{path}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all) for "
                         f"{config.hf_model_type}")
    handles, stacked = {}, {}
    with contextlib.ExitStack() as open_files:
        for m in maps:
            _fill(model, m, files, handles, stacked, open_files, path)
    for param, buffer in stacked.values():
        param.set_value(jnp.asarray(buffer))
    unfilled = [p for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)
                and isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if unfilled:
        raise ValueError(f"{path}: no {config.hf_model_type} tensor fills parameter {unfilled[0]}")
    return model


def _fill(model, m, files, handles, stacked, open_files, path) -> None:
    """Fill the parameters of one hub tensor map `m` from its safetensors files (each opened once
    into `handles` and closed with `open_files`; a map with parts reads their concatenation);
    slices of stacked weights gather in `stacked`."""
    tensors = []
    for key in m.hub_keys:
        if key not in files:
            raise ValueError(f"{path}: missing tensor {key!r}")
        if files[key] not in handles:
            handles[files[key]] = open_files.enter_context(open_safetensors(files[key]))
        tensors.append(handles[files[key]].get_tensor(key))
    targets = [_target(model, p) for p in m.paths]
    shapes = [tuple(p.get_value().shape)[0 if i is None else 1:] for p, i in targets]
    want = jax.eval_shape(m.to_hub, *[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]).shape
    name = " + ".join(repr(k) for k in m.hub_keys)
    if len({t.shape[1:] for t in tensors}) > 1:
        raise ValueError(f"{path}: tensors {name} have shapes {[tuple(t.shape) for t in tensors]}, which do not "
                         f"stack along axis 0")
    hub = np.concatenate(tensors, axis=0) if m.parts else tensors[0]
    if tuple(hub.shape) != tuple(want):
        raise ValueError(f"{path}: tensor {name} has shape {tuple(hub.shape)}, the model needs {tuple(want)}")
    for (param, index), value in zip(targets, m.to_model(jnp.asarray(hub), shapes)):
        if index is None:
            param.set_value(value.astype(param.get_value().dtype))
        else:   # slices of a stacked weight gather in a host buffer, set once by the caller
            if id(param) not in stacked:
                stacked[id(param)] = (param, np.zeros(param.get_value().shape, param.get_value().dtype))
            stacked[id(param)][1][index] = np.asarray(value)


def hub_tensors(model: HybridModel) -> dict[str, np.ndarray]:
    """{hub key: numpy array} of the model's parameters (in their parameter dtype).

    A layer without an MLP (`model.no_mlp_layers`: an inserted block) is written with an MLP
    whose weights and norm are zeros, which adds exactly 0 to the residual stream (SwiGLU of
    anything times a zero down-projection), so the hub model computes the same function."""
    config = model.config
    with_mlps = dataclasses.replace(config, no_mlp_layers=())
    full = abstract_model(with_mlps) if config.no_mlp_layers else model

    def absent(path):   # a part of the feed-forward half of a layer that has none
        return path[0] == "blocks" and path[1] in config.no_mlp_layers and path[2] in _MLP_PARTS

    def value(path):
        param, index = _target(full if absent(path) else model, path)
        if absent(path):
            shape = param.get_value().shape[0 if index is None else 1:]
            return jnp.zeros(shape, config.param_dtype)
        return param.get_value() if index is None else param.get_value()[index]

    out = {}
    for m in exportable(config).tensor_maps(with_mlps):
        values = [value(p) for p in m.paths]
        if m.parts:
            out.update({key: np.asarray(m.to_hub(v)) for key, v in zip(m.parts, values)})
        else:
            out[m.key] = np.asarray(m.to_hub(*values))
    return out


def save_pretrained(model: HybridModel, path: str, base_config: dict | None = None, *,
                    max_shard_bytes: int = 5 * 2**30) -> None:
    """Write `config.json` and the weights (hub key names) into directory `path`.

    The config's architecture fields come from `model.config`; `base_config` (e.g. the imported
    checkpoint's `read_hub_config`) supplies the rest (token ids, context length, ...). Weights
    over `max_shard_bytes` go into `model-0000i-of-0000n.safetensors` shards plus
    `model.safetensors.index.json`, as transformers writes them; else one `model.safetensors`.
    Every file is written under a temporary name and renamed into place.
    """
    config = model.config
    hub_config = {**(base_config or {}), **exportable(config).hub_config(dataclasses.replace(config, no_mlp_layers=()))}
    os.makedirs(path, exist_ok=True)
    shards, size = [{}], 0
    for key, value in hub_tensors(model).items():
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = np.ascontiguousarray(value)
        size += value.nbytes
    names = ([WEIGHTS_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        write_atomic(os.path.join(path, name), lambda f: save_file(shard, f, metadata={"format": "pt"}))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.nbytes for shard in shards for v in shard.values())},
                 "weight_map": {key: name for name, shard in zip(names, shards) for key in shard}}
        write_text_atomic(os.path.join(path, INDEX_FILE), json.dumps(index, indent=2))
    write_text_atomic(os.path.join(path, CONFIG_FILE), json.dumps(hub_config, indent=2))


def logits(model: HybridModel, tokens) -> jax.Array:
    """float32 logits [B, T, vocab] of int tokens [B, T]: a plain causal forward, no sleep."""
    return model(jnp.asarray(tokens), window=None)[0]


def tokenizer(path: str):
    """The checkpoint directory's `tokenizer.json` as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer
    file = os.path.join(path, "tokenizer.json")
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: no tokenizer.json in the checkpoint directory")
    return Tokenizer.from_file(file)
