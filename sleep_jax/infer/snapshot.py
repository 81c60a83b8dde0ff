"""A slot's session on disk: one safetensors file of its state's arrays, with metadata saying
which model (config and a hash of its parameters) and which sleep config wrote it.

`Engine.snapshot` / `Engine.restore` call these; a restore into an engine of another model or
sleep config is refused with the first key that differs (`flat.differences`), and nothing changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from sleep_jax.files import write_atomic
from sleep_jax.flat import differences

FORMAT = "sleep_jax.infer.slot/1"


def _leaf_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def named_leaves(tree) -> dict:
    """{"recurrent/layer1/S": leaf, ...} for a pytree of dicts."""
    return {_leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def fingerprint(params) -> str:
    """sha256 over the parameters' names and bytes (an `nnx.State`)."""
    digest = hashlib.sha256()
    for name, leaf in sorted(named_leaves(nnx.to_pure_dict(params)).items()):
        digest.update(name.encode())
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def metadata(model_config, sleep, params_sha256: str) -> dict:
    """The string metadata a snapshot carries: its format, the model and sleep configs (JSON), and
    the parameters' fingerprint."""
    sleep = {"passes": sleep.passes, "window": sleep.window, "eviction": sleep.eviction,
             "carry_conv_tail": sleep.carry_conv_tail}
    return {"format": FORMAT, "model": json.dumps(dataclasses.asdict(model_config), sort_keys=True),
            "sleep": json.dumps(sleep, sort_keys=True), "params_sha256": params_sha256}


def write(path: str, arrays: dict, meta: dict) -> None:
    """{name: numpy array} and the metadata to `path`, atomically (a temporary file renamed)."""
    write_atomic(path, lambda temporary: save_file(arrays, temporary, metadata=meta))


def _configs(meta: dict) -> dict:
    return {block: json.loads(meta.get(block, "{}")) for block in ("model", "sleep")}


def read(path: str, expected: dict, leaves: dict) -> dict:
    """The arrays of the snapshot at `path`, once its metadata matches `expected` (same format,
    configs and parameters) and its arrays are exactly `leaves` ({name: (shape, dtype)}); else a
    ValueError naming the first difference."""
    if not os.path.isfile(path):
        raise ValueError(f"snapshot {path!r} does not exist")
    try:
        with safe_open(path, "np") as f:
            meta = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise ValueError(f"snapshot {path!r} is not a safetensors file: {error}") from error
    if meta.get("format") != FORMAT:
        raise ValueError(f"snapshot {path!r}: format {meta.get('format')!r} is not {FORMAT!r}")
    for key, (theirs, ours) in differences(_configs(meta), _configs(expected)).items():
        raise ValueError(f"snapshot {path!r} is from another config: {key} is {theirs!r} there, {ours!r} here")
    if meta.get("params_sha256") != expected["params_sha256"]:
        raise ValueError(f"snapshot {path!r} is from a model with other parameters (params_sha256 differs)")
    if set(arrays) != set(leaves):
        raise ValueError(f"snapshot {path!r}: tensors {sorted(set(arrays) ^ set(leaves))} do not match this engine")
    for name, (shape, dtype) in leaves.items():
        if arrays[name].shape != shape or arrays[name].dtype != dtype:
            raise ValueError(f"snapshot {path!r}: {name} is {arrays[name].dtype}{list(arrays[name].shape)}, "
                             f"expected {dtype}{list(shape)}")
    return arrays
