"""The experiment config: blocks, defaults, validation, and the typed configs built from it.

A config (``configs/<task>.py``) is an ``ml_collections.ConfigDict`` with exactly these blocks:

- ``model``: the fields of ``sleep_jax.model.ModelConfig`` 1:1; ``vocab_size`` may be None
  (filled from the task's vocabulary).
- ``sleep``: the fields of ``sleep_jax.sleep.SleepConfig`` 1:1 (``passes`` N, ``window`` L, ...).
- ``task``: ``sleep_jax.tasks.default_config(name)`` with overrides.
- ``train``: the keys of ``TRAIN_DEFAULTS`` (steps, batch size, optimiser, logging, eval).
- ``mesh``: ``data``, ``fsdp``, ``tensor`` sizes (one may be -1: the remaining devices).

``validate`` checks a config against the task and the devices before anything is built, and
raises ``ValueError`` naming the key at fault.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from sleep_jax.parallel.mesh import MESH_AXES, mesh_shape

BLOCKS = ("model", "sleep", "task", "train", "mesh")

TRAIN_DEFAULTS = dict(
    steps=1000,             # optimiser steps
    batch_size=64,          # global batch (sequences per step, over all processes)
    seed=0,                 # parameter init and training data
    muon_lr=2e-3,           # peak LR of Muon (hidden weight matrices)
    adamw_lr=5e-5,          # peak LR of AdamW (embeddings, unembedding, vectors)
    warmup_steps=100,       # linear warmup from 0
    schedule="cosine",      # after warmup: constant | cosine | linear
    final_lr_fraction=0.1,  # cosine/linear decay to peak * this at train.steps
    weight_decay=0.0,
    grad_clip=1.0,          # global-norm clipping; <= 0 disables
    adam_b1=0.9,
    adam_b2=0.95,
    muon_beta=0.95,         # Muon momentum
    log_every=10,           # steps between metrics lines (0: never)
    eval_every=0,           # steps between evaluations during training (0: only at the end)
    checkpoint_every=500,   # steps between checkpoints (0: only at the end)
    keep_checkpoints=3,
    eval_batch_size=128,    # the eval set's size is the task's (task.eval_examples)
    eval_seed=0,            # seed of the eval split (fixed across runs: the same held-out set)
)


def base_config(task_name: str, task_size: str = "paper") -> ml_collections.ConfigDict:
    """The blocks every config starts from; ``model`` and ``sleep`` are filled by the config file.

    ``task`` is ``sleep_jax.tasks.default_config(task_name, task_size)`` (``"paper"``/``"tiny"``).
    """
    from sleep_jax import tasks

    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict()
    config.sleep = ml_collections.ConfigDict()
    config.task = tasks.default_config(task_name, task_size)
    config.train = ml_collections.ConfigDict(dict(TRAIN_DEFAULTS))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return config


# Model fields whose value may be None; typed placeholders let the command line set them.
_OPTIONAL_MODEL_FIELDS = {"vocab_size": int, "loop": tuple, "qk_norm": str, "gdn_norm_eps": float, "hf_model_type": str}


def _defaults(cls) -> dict[str, Any]:
    """{field: default} of a config dataclass, for the fields that have one."""
    return {field.name: field.default for field in dataclasses.fields(cls)
            if field.default is not dataclasses.MISSING}


def _with_overrides(block: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    _check_known_keys(block, overrides, defaults)
    return {**defaults, **overrides}


def model_block(**overrides: Any) -> ml_collections.ConfigDict:
    """The ``model`` block: ``sleep_jax.model.ModelConfig``'s defaults with ``overrides``.

    ``vocab_size`` defaults to None (take the task's). ``vocab_size=None`` and ``loop=None``
    become typed placeholders, so ``--config.model.loop='(0,2)'`` and
    ``--config.model.vocab_size=512`` work. An unknown field raises ``ValueError``.
    """
    from sleep_jax.model import ModelConfig

    fields = _with_overrides("model", {"vocab_size": None, **_defaults(ModelConfig)}, overrides)
    for name, kind in _OPTIONAL_MODEL_FIELDS.items():
        if fields[name] is None:
            fields[name] = ml_collections.config_dict.placeholder(kind)
    return ml_collections.ConfigDict(fields)


def sleep_block(window: int, **overrides: Any) -> ml_collections.ConfigDict:
    """The ``sleep`` block: ``sleep_jax.sleep.SleepConfig``'s defaults with ``overrides``.

    ``window`` (L, tokens) has no default here: it must be the task layout's window. An unknown
    field raises ``ValueError``.
    """
    from sleep_jax.sleep import SleepConfig

    return ml_collections.ConfigDict(_with_overrides("sleep", _defaults(SleepConfig),
                                                      dict(overrides, window=window)))


def _field_names(cls) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def _check_known_keys(block: str, present, allowed) -> None:
    unknown = sorted(set(present) - set(allowed))
    if unknown:
        raise ValueError(f"{block}.{unknown[0]}: unknown key; the {block} block takes "
                         f"{sorted(allowed)}")


def _check_keys(block: str, present, allowed) -> None:
    _check_known_keys(block, present, allowed)
    missing = sorted(set(allowed) - set(present))
    if missing:
        raise ValueError(f"{block}.{missing[0]}: missing key in the {block} block")


def check_structure(config: ml_collections.ConfigDict) -> None:
    """Key-level checks that need neither the task nor the devices (the task block is checked
    by ``sleep_jax.tasks.make``)."""
    from sleep_jax.model import ModelConfig
    from sleep_jax.sleep import SleepConfig

    _check_keys("config", config.keys(), BLOCKS)
    _check_keys("model", config.model.keys(), _field_names(ModelConfig))
    _check_keys("sleep", config.sleep.keys(), _field_names(SleepConfig))
    _check_keys("train", config.train.keys(), TRAIN_DEFAULTS)
    _check_keys("mesh", config.mesh.keys(), MESH_AXES)
    passes = config.sleep.passes
    if not isinstance(passes, int) or passes < 1:
        raise ValueError(f"sleep.passes={passes!r}: the number of sleep passes must be an int >= 1")
    train = config.train
    for key in ("steps", "batch_size", "eval_batch_size"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ValueError(f"train.{key}={train[key]!r}: must be an int >= 1")
    for key in ("log_every", "eval_every", "checkpoint_every", "warmup_steps"):
        if not isinstance(train[key], int) or train[key] < 0:
            raise ValueError(f"train.{key}={train[key]!r}: must be an int >= 0")
    if train.warmup_steps > train.steps:
        raise ValueError(f"train.warmup_steps={train.warmup_steps} exceeds train.steps={train.steps}")


def validate(config: ml_collections.ConfigDict, task: Any, device_count: int,
             batch_divisor_fn=None) -> tuple[int, int, int]:
    """All start-up checks; returns the mesh shape.

    Args:
      task: the built task (its ``layout`` and ``vocab`` are checked against the config).
      device_count: devices the mesh must cover.
      batch_divisor_fn: ``mesh_shape -> int``, how many ways the batch is split (default
        ``data * fsdp``).
    """
    check_structure(config)
    if config.sleep.window != task.layout.window:
        raise ValueError(f"sleep.window={config.sleep.window} does not fit the task layout: "
                         f"task {task.name!r} uses windows of {task.layout.window} tokens")
    vocab = config.model.vocab_size
    if vocab is not None and vocab < task.vocab.size:
        raise ValueError(f"model.vocab_size={vocab} is smaller than the task vocabulary "
                         f"({task.vocab.size}); leave it None to take the task's")
    shape = mesh_shape(dict(config.mesh), device_count)
    divisor = batch_divisor_fn(shape) if batch_divisor_fn else shape[0] * shape[1]
    for key in ("batch_size", "eval_batch_size"):
        if config.train[key] % divisor:
            raise ValueError(f"train.{key}={config.train[key]} must be a multiple of "
                             f"mesh.data x mesh.fsdp = {divisor}")
    return shape


def model_config(config: ml_collections.ConfigDict, task: Any):
    """``ModelConfig`` from the ``model`` block, ``vocab_size`` from the task when None."""
    from sleep_jax.model import ModelConfig

    fields = config.model.to_dict()
    if fields["vocab_size"] is None:
        fields["vocab_size"] = task.vocab.size
    if fields.get("loop") is not None:
        fields["loop"] = tuple(fields["loop"])
    return ModelConfig(**fields)


def sleep_config(config: ml_collections.ConfigDict):
    """``SleepConfig`` from the ``sleep`` block."""
    from sleep_jax.sleep import SleepConfig

    return SleepConfig(**config.sleep.to_dict())
