"""The experiment config: blocks, defaults, validation, and the typed configs built from it.

A config (``configs/<task>.py``) is an ``ml_collections.ConfigDict`` with exactly these blocks:

- ``model``: the fields of ``sleep_jax.model.ModelConfig`` 1:1; ``vocab_size`` may be None
  (filled from the task's vocabulary).
- ``sleep``: the fields of ``sleep_jax.sleep.SleepConfig`` 1:1 (``passes`` N, ``window`` L, ...).
- ``task``: ``sleep_jax.tasks.default_config(name)`` with overrides.
- ``train``: the fields of ``TrainConfig`` 1:1 (steps, batch size, optimiser, logging, eval).
- ``mesh``: ``data``, ``fsdp``, ``tensor`` sizes (one may be -1: the remaining devices).
- ``init``: where the parameters start (``INIT_DEFAULTS``): ``hf_dir`` "" (random init) or a
  Hugging Face directory / a run directory written by ``sleep_jax.convert``; ``insert_positions``,
  ``insert_kind``, ``insert_mlp``: blocks inserted into it (``sleep_jax.hf.insert``).
- ``stages``: the training stages, one tuple entry per stage (``STAGE_KEYS``); all empty = one
  stage from the ``train`` and ``sleep`` blocks. See ``Stage`` and ``stage_plan``.

``validate`` checks a config against the task and the devices before anything is built, and
raises ``ConfigError`` (a ``ValueError``), one line starting with the key at fault. Each rule
lives in one place: the typed configs (``TrainConfig`` here, ``ModelConfig``, ``SleepConfig``,
the task's ``make``) check their own values; ``validate`` adds only what needs two blocks, the
task or the devices.

The run's record (``<workdir>/config.json``, resuming) is ``sleep_jax.train.record``; running the
stages and fine-tuning from a pretrained checkpoint (``resolve``) is ``sleep_jax.train.stages``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from sleep_jax.parallel.mesh import MESH_AXES, mesh_shape
from sleep_jax.train.errors import ConfigError
from sleep_jax.windows import check_eviction

BLOCKS = ("model", "sleep", "task", "train", "mesh", "init", "stages")

# init.hf_dir "": random init; else a Hugging Face directory (config.json, *.safetensors,
# tokenizer.json) or a run directory written by sleep_jax.convert (model.json, params/, hub/).
INIT_DEFAULTS = {"hf_dir": "", "insert_positions": (), "insert_kind": "", "insert_mlp": False}
# One tuple entry per stage; all empty: one stage from the train and sleep blocks.
STAGE_KEYS = ("steps", "epochs", "trainable", "eviction", "window", "muon_lr", "adamw_lr")
# In stages.trainable: the blocks inserted by init.insert_positions.
INSERTED = "@inserted"

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train`` block, field for field; every rule on a train value is checked here.

    Errors are ``ConfigError`` starting with the key, e.g. ``train.seed=-1: must be an int >= 0``.
    """
    steps: int = 1000             # optimiser steps
    batch_size: int = 64          # global batch (sequences per step, over all processes)
    grad_accum_steps: int = 1     # micro-batches per step (batch_size / this rows each), one update
    seed: int = 0                 # parameter init and training data
    muon_lr: float = 2e-3         # peak LR of Muon (hidden weight matrices)
    adamw_lr: float = 5e-5        # peak LR of AdamW (embeddings, unembedding, vectors)
    warmup_steps: int = 100       # linear warmup from 0
    schedule: str = "cosine"      # after warmup: constant | cosine | linear
    final_lr_fraction: float = 0.1  # cosine/linear decay to peak * this at train.steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0        # global-norm clipping; 0 disables
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    muon_beta: float = 0.95       # Muon momentum
    log_every: int = 10           # steps between metrics lines (0: never)
    eval_every: int = 0           # steps between evaluations during training (0: only at the end)
    checkpoint_every: int = 500   # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 3     # newest checkpoints kept on disk (>= 1: the last one always is)
    eval_batch_size: int = 128    # the eval set's size is the task's (task.eval_examples)
    eval_seed: int = 0            # seed of the eval split (fixed across runs: the same held-out set)

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum_steps", "eval_batch_size",
                     "keep_checkpoints"):
            self._check_int(name, 1)
        for name in ("seed", "eval_seed", "warmup_steps", "log_every", "eval_every",
                     "checkpoint_every"):
            self._check_int(name, 0)
        for name in ("muon_lr", "adamw_lr"):
            self._check_float(name, self._number(name) > 0, "a learning rate > 0")
        for name in ("weight_decay", "grad_clip"):
            self._check_float(name, self._number(name) >= 0, "a number >= 0")
        self._check_float("final_lr_fraction", 0 <= self._number("final_lr_fraction") <= 1,
                          "a number in [0, 1]")
        for name in ("adam_b1", "adam_b2", "muon_beta"):
            self._check_float(name, 0 <= self._number(name) < 1, "a number in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule={self.schedule!r}: must be one of {SCHEDULES}")
        if self.warmup_steps > self.steps:
            raise ConfigError(f"train.warmup_steps={self.warmup_steps}: exceeds train.steps="
                              f"{self.steps}")

    def _check_int(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"train.{name}={value!r}: must be an int >= {minimum}")

    def _number(self, name: str) -> float:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise ConfigError(f"train.{name}={value!r}: must be a finite number")
        return float(value)

    def _check_float(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"train.{name}={getattr(self, name)!r}: must be {what}")


def _defaults(cls) -> dict[str, Any]:
    """{field: default} of a config dataclass, for the fields that have one."""
    return {field.name: field.default for field in dataclasses.fields(cls)
            if field.default is not dataclasses.MISSING}


TRAIN_DEFAULTS = _defaults(TrainConfig)


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
    config.init = ml_collections.ConfigDict(dict(INIT_DEFAULTS))
    config.stages = ml_collections.ConfigDict({key: () for key in STAGE_KEYS})
    return config


# Model fields whose value may be None; typed placeholders let the command line set them.
_OPTIONAL_MODEL_FIELDS = {"vocab_size": int, "loop": tuple, "qk_norm": str, "gdn_norm_eps": float, "hf_model_type": str}


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
        raise ConfigError(f"{block}.{unknown[0]}: unknown key; the {block} block takes "
                          f"{sorted(allowed)}")


def _check_keys(block: str, present, allowed) -> None:
    _check_known_keys(block, present, allowed)
    missing = sorted(set(allowed) - set(present))
    if missing:
        raise ConfigError(f"{block}.{missing[0]}: missing key in the {block} block")


def check_structure(config: ml_collections.ConfigDict) -> None:
    """Every block present with exactly its keys (the task block is checked by
    ``sleep_jax.tasks.make``)."""
    from sleep_jax.model import ModelConfig
    from sleep_jax.sleep import SleepConfig

    _check_keys("config", config.keys(), BLOCKS)
    _check_keys("model", config.model.keys(), _field_names(ModelConfig))
    _check_keys("sleep", config.sleep.keys(), _field_names(SleepConfig))
    _check_keys("train", config.train.keys(), _field_names(TrainConfig))
    _check_keys("mesh", config.mesh.keys(), MESH_AXES)
    _check_keys("init", config.init.keys(), INIT_DEFAULTS)
    _check_keys("stages", config.stages.keys(), STAGE_KEYS)


def validate(config: ml_collections.ConfigDict, task: Any, device_count: int,
             batch_divisor_fn=None) -> tuple[Stage, ...]:
    """All start-up checks; returns the run's stages (``stage_plan``). Raises ``ConfigError``
    naming the key.

    Args:
      task: the built task (its ``layout`` and ``vocab`` are checked against the config).
      device_count: devices the mesh must cover.
      batch_divisor_fn: ``mesh_shape -> int``, how many ways the batch is split (default
        ``data * fsdp``).
    """
    from sleep_jax import halting

    try:
        check_structure(config)
        train = train_config(config)
        halting.check(sleep_config(config), model_config(config, task))   # each checks its own fields, then
                                                                          # sleep.halting against the model
        if config.sleep.window != task.layout.window:
            raise ConfigError(f"sleep.window={config.sleep.window}: does not fit the task "
                              f"layout: task {task.name!r} uses windows of "
                              f"{task.layout.window} tokens")
        vocab = config.model.vocab_size
        if vocab is not None and vocab < task.vocab.size:
            raise ConfigError(f"model.vocab_size={vocab}: smaller than the task vocabulary "
                              f"({task.vocab.size}); leave it None to take the task's")
        shape = mesh_shape(dict(config.mesh), device_count)
        stages = stage_plan(config, task)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:  # the typed configs' own checks
        raise ConfigError(str(error)) from None
    divisor = batch_divisor_fn(shape) if batch_divisor_fn else shape[0] * shape[1]
    # Each of the grad_accum_steps micro-batches is split over the batch axes.
    accum = train.grad_accum_steps
    if train.batch_size % (accum * divisor):
        split = (f"mesh.data x mesh.fsdp = {accum} x {shape[0]} x {shape[1]}"
                 if batch_divisor_fn is None else f"the batch split = {accum} x {divisor}")
        raise ConfigError(f"train.batch_size={train.batch_size}: must be a multiple of "
                          f"train.grad_accum_steps x {split} = {accum * divisor}")
    if train.eval_batch_size % divisor:
        raise ConfigError(f"train.eval_batch_size={train.eval_batch_size}: must be a multiple of "
                          f"mesh.data x mesh.fsdp = {divisor}")
    return stages


def make_task(config: ml_collections.ConfigDict) -> Any:
    """``sleep_jax.tasks.make(config.task)``; its errors (naming ``task.<key>``) as ConfigError."""
    from sleep_jax import tasks

    try:
        return tasks.make(config.task)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def train_config(config: ml_collections.ConfigDict) -> TrainConfig:
    """``TrainConfig`` from the ``train`` block (checking every value)."""
    return TrainConfig(**config.train.to_dict())


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


# ----------------------------------------------------------------------------------------------
# The stages block: the run's stages


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage, resolved: global steps ``first_step + 1 .. last_step`` (the state
    saved at ``last_step`` is still this stage's; the next stage starts a fresh optimiser from
    its parameters).

    Attributes:
      trainable: path patterns (``fnmatch`` on ``blocks/3/mixer/w_q``-style parameter paths);
        parameters that match none are frozen (no gradient, no optimiser state, bit-identical).
    """
    index: int
    first_step: int
    steps: int
    trainable: tuple[str, ...]
    eviction: str
    window: int
    muon_lr: float
    adamw_lr: float

    @property
    def last_step(self) -> int:
        return self.first_step + self.steps

    @property
    def number(self) -> int:
        """``index + 1``: stages as logs, metrics.jsonl, errors and the README count them."""
        return self.index + 1


def _stage_columns(config: ml_collections.ConfigDict) -> dict[str, tuple]:
    columns = {key: tuple(config.stages[key] or ()) for key in STAGE_KEYS}
    count = len(columns["trainable"]) or len(columns["steps"]) or len(columns["epochs"])
    for key in STAGE_KEYS:
        if key in ("steps", "epochs") and not columns[key]:
            columns[key] = (0,) * count
        if len(columns[key]) != count:
            raise ConfigError(f"stages.{key}={columns[key]!r}: has {len(columns[key])} entries, "
                              f"the stage list has {count} (one per stage in every stages key)")
    return columns


def stage_plan(config: ml_collections.ConfigDict, task: Any) -> tuple[Stage, ...]:
    """The run's stages from the ``stages`` block (``ConfigError`` naming the key at fault), or
    one stage from the ``train`` and ``sleep`` blocks when the block is empty.

    Each stage has either ``steps`` or ``epochs`` (> 0, the other 0); an epoch is
    ``task.train_size`` examples. The last stage's window and eviction must be the ``sleep``
    block's: the run is evaluated with them.
    """
    train = TrainConfig(**config.train.to_dict())
    columns = _stage_columns(config)
    if not columns["trainable"]:
        return (Stage(0, 0, train.steps, ("*",), config.sleep.eviction, config.sleep.window,
                      train.muon_lr, train.adamw_lr),)
    stages, first = [], 0
    for i in range(len(columns["trainable"])):
        steps, epochs = columns["steps"][i], columns["epochs"][i]
        for key, value in (("steps", steps), ("epochs", epochs)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"stages.{key}={columns[key]!r}: entry {i} must be a number >= 0")
        if (steps > 0) == (epochs > 0):
            raise ConfigError(f"stages.steps={columns['steps']!r}: stage {i + 1} needs steps or epochs "
                              f"(stages.epochs={columns['epochs']!r}), exactly one of them > 0")
        if epochs:
            if not task.train_size:
                raise ConfigError(f"stages.epochs={columns['epochs']!r}: task {task.name!r} has an "
                                  "endless train split; give stages.steps, or a fixed train set "
                                  "(task.train_examples or task.data)")
            steps = math.ceil(epochs * task.train_size / train.batch_size)
        elif not isinstance(steps, int):
            raise ConfigError(f"stages.steps={columns['steps']!r}: entry {i} must be an int")
        trainable = tuple(p.strip() for p in str(columns["trainable"][i]).split(",") if p.strip())
        if not trainable:
            raise ConfigError(f"stages.trainable={columns['trainable']!r}: entry {i} is empty")
        if INSERTED in trainable:
            positions = tuple(config.init.insert_positions)
            if not positions:
                raise ConfigError(f"stages.trainable={columns['trainable']!r}: {INSERTED} names "
                                  "the inserted blocks, but init.insert_positions is empty")
            trainable = tuple(p for p in trainable if p != INSERTED) + tuple(
                f"blocks/{position}/*" for position in positions)
        try:
            check_eviction(columns["eviction"][i], f"stages.eviction={columns['eviction']!r}: entry {i}")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        for key in ("window", "muon_lr", "adamw_lr"):
            value = columns[key][i]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or \
                    (key == "window" and not isinstance(value, int)):
                raise ConfigError(f"stages.{key}={columns[key]!r}: entry {i} must be "
                                  f"{'an int' if key == 'window' else 'a number'} > 0")
        stages.append(Stage(i, first, int(steps), trainable, columns["eviction"][i],
                            columns["window"][i], float(columns["muon_lr"][i]),
                            float(columns["adamw_lr"][i])))
        first += int(steps)
    last = stages[-1]
    if last.window != config.sleep.window:
        raise ConfigError(f"stages.window={columns['window']!r}: the last stage's window must be "
                          f"sleep.window={config.sleep.window}, the window the run is evaluated with")
    if last.eviction != config.sleep.eviction:
        raise ConfigError(f"stages.eviction={columns['eviction']!r}: the last stage's eviction must "
                          f"be sleep.eviction={config.sleep.eviction!r}, the run's evaluation setting")
    return tuple(stages)
