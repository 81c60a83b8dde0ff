"""How one hub tensor maps onto model parameters, and back.

A `TensorMap` ties one key of a hub checkpoint to one or more parameters of a `HybridModel`
(by attribute path) with a pair of pure reshapes: `to_model(hub array, parameter shapes)` and
`to_hub(*parameter arrays)`. Both use only reshapes, transposes, splits and concatenations, so an
import followed by an export gives back the same bits. Hub linear weights are PyTorch `[out, in]`;
the model's are `[in, ...out]` (or `[...in, out]` for projections back to the model width).

A map with `parts` stands for several hub tensors stacked along axis 0, part i holding path i's
rows (`to_hub` of that parameter alone): an import reads the parts' concatenation and splits it by
the model's own dims, so any split of the same rows loads (what transformers does: its own
`save_pretrained` cuts OLMo-Hybrid's fused conv into equal chunks, not at the q/k/v boundaries),
and an export writes the true split.
"""
import dataclasses
import math
from typing import Callable

import jax.numpy as jnp
from safetensors import SafetensorError, safe_open


@dataclasses.dataclass(frozen=True)
class TensorMap:
    key: str                                  # the hub key, e.g. "model.layers.0.mlp.up_proj.weight"
    paths: tuple[tuple, ...]                  # attribute paths of the parameters it fills (a trailing
                                              # int after a parameter: one slice of its leading axis)
    to_model: Callable                        # (hub array, [parameter shapes]) -> [parameter arrays]
    to_hub: Callable                          # (*parameter arrays) -> hub array
    parts: tuple[str, ...] = ()               # hub keys stored instead of `key`, one per path
                                              # (rows of the axis-0 concatenation; module docstring)

    @property
    def hub_keys(self) -> tuple[str, ...]:
        """The keys this map reads and writes in a checkpoint."""
        return self.parts or (self.key,)


def copy(key, path) -> TensorMap:
    """Same array on both sides (embeddings, norm weights, A_log, dt_bias)."""
    return TensorMap(key, (path,), lambda w, shapes: [w], lambda a: a)


def reshaped(key, path) -> TensorMap:
    """Hub 1-D array <-> parameter of any shape, same elements in the same order (a bias `[H*Dh]`
    <-> `[H, Dh]`)."""
    return TensorMap(key, (path,), lambda w, shapes: [w.reshape(shapes[0])], lambda a: a.reshape(-1))


def dense_in(key, *paths) -> TensorMap:
    """Hub `[out_1 + out_2 + ..., D]` (rows concatenated) <-> parameters `[D, ...out_i]`."""
    def to_model(w, shapes):
        sizes = [math.prod(s[1:]) for s in shapes]
        parts = jnp.split(w, list(_cumsum(sizes)), axis=0)
        return [p.T.reshape(s) for p, s in zip(parts, shapes)]

    def to_hub(*arrays):
        return jnp.concatenate([a.reshape(a.shape[0], -1).T for a in arrays], axis=0)
    return TensorMap(key, tuple(paths), to_model, to_hub)


def dense_out(key, path) -> TensorMap:
    """Hub `[D, in]` <-> parameter `[...in, D]` (output projections)."""
    return TensorMap(key, (path,), lambda w, shapes: [w.T.reshape(shapes[0])],
                     lambda a: a.reshape(-1, a.shape[-1]).T)


def dense_in_interleaved(key, *paths, groups: int | None = None) -> TensorMap:
    """Hub `[G * (n_1 + n_2 + ...), D]`, per group g the parameters' rows of group g in turn <->
    parameters `[D, ...]` whose trailing dims split into G groups (default G = the first
    parameter's dim 1). Qwen3.5's q_proj: per head a query and a gate; Qwen3-Next's in_proj_qkvz /
    in_proj_ba: per key head its q, k, then its value heads' v and z (b and a)."""
    def to_model(w, shapes):
        count = groups or shapes[0][1]
        per_group = w.reshape(count, -1, w.shape[-1])
        parts = jnp.split(per_group, list(_cumsum([math.prod(s[1:]) // count for s in shapes])), axis=1)
        return [p.transpose(2, 0, 1).reshape(s) for p, s in zip(parts, shapes)]

    def to_hub(*arrays):
        count = groups or arrays[0].shape[1]
        per_group = jnp.concatenate([a.reshape(a.shape[0], count, -1).transpose(1, 2, 0) for a in arrays], axis=1)
        return per_group.reshape(-1, per_group.shape[-1])
    return TensorMap(key, tuple(paths), to_model, to_hub)


def depthwise_conv(key, *paths, parts: tuple[str, ...] = ()) -> TensorMap:
    """Hub Conv1d weight `[C_1 + C_2 + ..., 1, W]` <-> parameters `[W, ...c_i]` (channels split in
    turn); with `parts` (one hub key per path) stored as separate tensors `[C_i, 1, W]`."""
    def to_model(w, shapes):
        sizes = [math.prod(s[1:]) for s in shapes]
        parts = jnp.split(w[:, 0, :], list(_cumsum(sizes)), axis=0)
        return [p.T.reshape(s) for p, s in zip(parts, shapes)]

    def to_hub(*arrays):
        return jnp.concatenate([a.reshape(a.shape[0], -1).T for a in arrays], axis=0)[:, None, :]
    if parts and len(parts) != len(paths):
        raise ValueError(f"{key}: {len(parts)} parts for {len(paths)} parameters")
    return TensorMap(key, tuple(paths), to_model, to_hub, tuple(parts))


def _cumsum(sizes):
    """Split points for jnp.split: running sums of all but the last size."""
    total, points = 0, []
    for size in sizes[:-1]:
        total += size
        points.append(total)
    return points


def open_safetensors(path: str):
    """``safe_open(path)`` for numpy arrays (a context manager); ``ValueError`` naming the file
    when it is not a whole safetensors file (truncated, or something else)."""
    try:
        return safe_open(path, framework="np")
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
