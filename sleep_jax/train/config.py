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

``resolve`` turns a config into the run's config: with ``init.hf_dir`` the ``model`` block
becomes the checkpoint's architecture (plus the run's own choices, ``RUN_MODEL_KEYS``), the
task's tokenizer becomes the checkpoint's. Once the task is built, ``with_total_steps`` makes
``train.steps`` the stages' total (``train.loop.setup_stages`` builds each window's task once).

``validate`` checks a config against the task and the devices before anything is built, and
raises ``ConfigError`` (a ``ValueError``), one line starting with the key at fault. Each rule
lives in one place: the typed configs (``TrainConfig`` here, ``ModelConfig``, ``SleepConfig``,
the task's ``make``) check their own values; ``validate`` adds only what needs two blocks, the
task or the devices.

The run directory keeps the run's record, ``<workdir>/config.json`` (``write_run_config``,
``load_run_config``); ``check_resume`` compares a resumed run's config with it and
``eval_tag`` names an eval whose settings differ from it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import ml_collections

from sleep_jax.files import write_text_atomic
from sleep_jax.parallel.mesh import MESH_AXES, mesh_shape
from sleep_jax.train.errors import ConfigError

BLOCKS = ("model", "sleep", "task", "train", "mesh", "init", "stages")

# init.hf_dir "": random init; else a Hugging Face directory (config.json, *.safetensors,
# tokenizer.json) or a run directory written by sleep_jax.convert (model.json, params/, hub/).
INIT_DEFAULTS = {"hf_dir": "", "insert_positions": (), "insert_kind": "", "insert_mlp": False}
# One tuple entry per stage; all empty: one stage from the train and sleep blocks.
STAGE_KEYS = ("steps", "epochs", "trainable", "eviction", "window", "muon_lr", "adamw_lr")
# Model keys a fine-tuning run chooses itself; every other model key comes from init.hf_dir.
RUN_MODEL_KEYS = ("loop", "dtype", "param_dtype", "delta_rule_impl", "chunk_size")
# Model keys that shape an inserted block of a kind the checkpoint has none of: the run chooses
# them (e.g. model.jet_heads for JetBlocks inserted into Ouro).
INSERTED_KIND_KEYS = {"J": "jet_"}
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
        for name in ("steps", "batch_size", "eval_batch_size", "keep_checkpoints"):
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

# Keys a resumed run may change: they touch neither the model, the task, the sleep nor the
# optimiser state (``train.steps`` moves the end of the LR schedule; that is what extending a run
# means). Every other key must equal the run's config.json.
RESUMABLE_KEYS = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                  "train.keep_checkpoints", "train.eval_batch_size",
                  "mesh.data", "mesh.fsdp", "mesh.tensor")


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
    try:
        check_structure(config)
        train = train_config(config)
        model_config(config, task)   # ModelConfig checks its own fields
        sleep_config(config)         # SleepConfig checks its own fields
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
    for key in ("batch_size", "eval_batch_size"):
        if getattr(train, key) % divisor:
            raise ConfigError(f"train.{key}={getattr(train, key)}: must be a multiple of "
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
# The run's record: <workdir>/config.json

RUN_CONFIG = "config.json"


def flatten(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """``{"block.key": value}`` with tuples as lists (as they come back from JSON)."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    out = {}
    for block, keys in tree.items():
        for key, value in keys.items():
            out[f"{block}.{key}"] = plain(value)
    return out


def write_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes ``<workdir>/config.json`` atomically (a crash leaves the old one whole)."""
    write_text_atomic(os.path.join(workdir, RUN_CONFIG), config.to_json_best_effort(indent=1, sort_keys=True))


def load_run_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The run's ``config.json`` (lists back to tuples), or None if the run has none yet."""
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            tree = json.load(f)
    except ValueError as error:
        raise ConfigError(f"{path}: not a readable config ({error})") from None

    def typed(value):
        if isinstance(value, list):
            return tuple(typed(v) for v in value)
        return value

    record = {block: {key: typed(value) for key, value in keys.items()} for block, keys in tree.items()}
    # A record written before a key existed: the run ran with that key's default.
    for block, defaults in _record_defaults().items():
        record[block] = {**defaults, **record.get(block, {})}
    return ml_collections.ConfigDict(record)


def _record_defaults() -> dict[str, dict[str, Any]]:
    """{block: {key: default}} of the blocks whose keys have defaults (not ``task``: its defaults
    depend on the task and size)."""
    from sleep_jax.model import ModelConfig
    from sleep_jax.sleep import SleepConfig

    return {"model": _defaults(ModelConfig), "sleep": _defaults(SleepConfig), "train": dict(TRAIN_DEFAULTS),
            "init": dict(INIT_DEFAULTS), "stages": {key: () for key in STAGE_KEYS}}


def with_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``{"block.key": value}`` set (a new key is kept, so that
    ``validate`` names it)."""
    out = ml_collections.ConfigDict(config.to_dict())
    for path, value in overrides.items():
        block, _, key = path.partition(".")
        if block not in out:
            out[block] = ml_collections.ConfigDict()
        out[block][key] = value
    return out


def differences(stored: ml_collections.ConfigDict, given: ml_collections.ConfigDict
                ) -> dict[str, tuple[Any, Any]]:
    """``{"block.key": (stored value, given value)}`` for every key that differs (a key only one
    side has reads ``<absent>`` on the other)."""
    old, new = flatten(stored), flatten(given)
    absent = "<absent>"
    return {key: (old.get(key, absent), new.get(key, absent))
            for key in sorted(set(old) | set(new)) if old.get(key, absent) != new.get(key, absent)}


def check_resume(stored: ml_collections.ConfigDict, given: ml_collections.ConfigDict,
                 path: str) -> None:
    """Raises ``ConfigError`` naming the first key outside ``RESUMABLE_KEYS`` whose value differs
    from the run's record ``path`` (its config.json), with both values."""
    for key, (old, new) in differences(stored, given).items():
        if key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"{key}={new!r}: the run in {os.path.dirname(path)} was trained with {key}={old!r} "
                f"({path}); a resumed run may change only {', '.join(RESUMABLE_KEYS)}; use a new "
                f"--workdir for a different run")


# Keys that do not change what an eval computes: training-only settings and the mesh.
def _changes_eval(key: str) -> bool:
    if key.startswith("mesh."):
        return False
    if key.startswith("train."):
        return key == "train.eval_seed"
    return True


def eval_tag(stored: ml_collections.ConfigDict | None, given: ml_collections.ConfigDict) -> str | None:
    """``"sleep.passes=2"`` (``,``-joined) naming the eval settings that differ from the run's
    record, or None when the eval is the run's own (then it writes eval.json)."""
    if stored is None:
        return None
    changed = [f"{key}={new}".replace(" ", "").replace("/", "_")
               for key, (_, new) in differences(stored, given).items() if _changes_eval(key)]
    return ",".join(changed) or None


# ----------------------------------------------------------------------------------------------
# Stages and fine-tuning from a pretrained checkpoint


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
            raise ConfigError(f"stages.steps={columns['steps']!r}: stage {i} needs steps or epochs "
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
        from sleep_jax.sleep import EVICTIONS
        if columns["eviction"][i] not in EVICTIONS:
            raise ConfigError(f"stages.eviction={columns['eviction']!r}: entry {i} must be one of "
                              f"{EVICTIONS}")
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


def stage_tasks(config: ml_collections.ConfigDict, stages: tuple[Stage, ...],
                task: Any) -> dict[int, Any]:
    """The task of every window the ``stages`` use, by window: ``task`` (built from the ``task``
    block) for its own window, and each other window's built once (the ``task`` block with that
    window; its errors name ``stages.window``)."""
    tasks = {task.layout.window: task}
    for stage in stages:
        if stage.window in tasks:
            continue
        task_config = ml_collections.ConfigDict(config.task.to_dict())
        task_config.window = stage.window
        try:
            tasks[stage.window] = make_task(ml_collections.ConfigDict({"task": task_config}))
        except ConfigError as error:
            raise ConfigError(f"stages.window={tuple(config.stages.window)!r}: stage "
                              f"{stage.index}: {error}") from None
    return tasks


def with_total_steps(config: ml_collections.ConfigDict,
                     stages: tuple[Stage, ...]) -> ml_collections.ConfigDict:
    """``config`` with ``train.steps`` the ``stages``' total (and ``train.warmup_steps`` at most
    that): the run's record. ``config`` itself when it has no ``stages`` block (one stage of
    ``train.steps``)."""
    if not tuple(config.stages.trainable or ()):
        return config
    out = ml_collections.ConfigDict(config.to_dict())
    out.train.steps = stages[-1].last_step
    out.train.warmup_steps = min(out.train.warmup_steps, out.train.steps)
    return out


def stage_train_config(train: TrainConfig, stage: Stage) -> TrainConfig:
    """The ``TrainConfig`` of one stage: its steps and learning rates (its own warmup and
    schedule, over at most its steps)."""
    return dataclasses.replace(train, steps=stage.steps, muon_lr=stage.muon_lr,
                               adamw_lr=stage.adamw_lr,
                               warmup_steps=min(train.warmup_steps, stage.steps))


def stage_sleep_config(config: ml_collections.ConfigDict, stage: Stage):
    """The ``SleepConfig`` of one stage: the ``sleep`` block with its window and eviction."""
    from sleep_jax.sleep import SleepConfig

    return SleepConfig(**dict(config.sleep.to_dict(), window=stage.window, eviction=stage.eviction))


def pretrained_dir_kind(hf_dir: str) -> str:
    """What ``init.hf_dir`` is: ``"hub"`` (a Hugging Face directory: config.json) or ``"run"``
    (a run directory of ``sleep_jax.convert``: model.json); ``ConfigError`` if neither."""
    from sleep_jax import convert, hf

    if os.path.exists(os.path.join(hf_dir, hf.CONFIG_FILE)):
        return "hub"
    if os.path.exists(os.path.join(hf_dir, convert.MODEL_FILE)):
        return "run"
    raise ConfigError(f"init.hf_dir={hf_dir!r}: no config.json (a Hugging Face directory) or "
                      f"model.json (a run directory of sleep_jax.convert) there")


def pretrained_dir_config(hf_dir: str):
    """The ``ModelConfig`` of ``init.hf_dir`` (see ``pretrained_dir_kind``)."""
    from sleep_jax import convert, hf
    from sleep_jax.model import ModelConfig

    kind = pretrained_dir_kind(hf_dir)
    try:
        if kind == "hub":
            return hf.model_config(hf.read_hub_config(hf_dir))
        with open(os.path.join(hf_dir, convert.MODEL_FILE)) as f:
            return ModelConfig(**json.load(f))
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"init.hf_dir={hf_dir!r}: {error}") from None


def tokenizer_dir(hf_dir: str) -> str:
    """Where ``init.hf_dir``'s tokenizer.json is: the directory itself, or a run directory's hub/."""
    for candidate in (hf_dir, os.path.join(hf_dir, "hub")):
        if os.path.exists(os.path.join(candidate, "tokenizer.json")):
            return candidate
    raise ConfigError(f"init.hf_dir={hf_dir!r}: no tokenizer.json (nor hub/tokenizer.json) there; "
                      "the fine-tuning data is tokenized with the checkpoint's tokenizer")


def resolve(config: ml_collections.ConfigDict, *, need_tokenizer: bool = True) -> ml_collections.ConfigDict:
    """The run's config: a copy of ``config`` where, with ``init.hf_dir`` set, the ``model``
    block is the checkpoint's architecture after ``init.insert_*`` (keeping the given
    ``RUN_MODEL_KEYS``, and the keys of an inserted kind new to the checkpoint,
    ``INSERTED_KIND_KEYS``; ``model.loop`` counts the layers after insertion) and an empty
    ``task.tokenizer`` is the checkpoint's (the stages' total steps need the task built:
    ``with_total_steps``). ``ConfigError`` for a model key set to a value the checkpoint contradicts.
    ``need_tokenizer=False`` (``bench.memory``: shapes only) leaves the character vocabulary when
    the directory has no tokenizer.json; the layout (T, windows) is the same."""
    check_structure(config)
    out = ml_collections.ConfigDict(config.to_dict())
    init = config.init
    if init.hf_dir:
        from sleep_jax.hf.insert import inserted_config

        pretrained = pretrained_dir_config(init.hf_dir)
        run_keys = RUN_MODEL_KEYS
        prefix = INSERTED_KIND_KEYS.get(init.insert_kind)
        if init.insert_positions and prefix and init.insert_kind not in pretrained.pattern:
            run_keys += tuple(f.name for f in dataclasses.fields(pretrained) if f.name.startswith(prefix))
            pretrained = dataclasses.replace(pretrained, **{k: config.model[k] for k in run_keys
                                                            if k.startswith(prefix)})
        if init.insert_positions:
            try:
                pretrained = inserted_config(pretrained, tuple(init.insert_positions),
                                             init.insert_kind, mlp=bool(init.insert_mlp))
            except ValueError as error:
                raise ConfigError(f"init.insert_positions={tuple(init.insert_positions)}: "
                                  f"{error}") from None
        defaults = model_block()
        given = config.model.to_dict()
        fields = dataclasses.asdict(pretrained)
        for key, value in given.items():
            if key in run_keys:
                fields[key] = value
            elif value != defaults[key] and _plain(value) != _plain(fields[key]):
                raise ConfigError(f"model.{key}={value!r}: init.hf_dir={init.hf_dir!r} fixes the "
                                  f"architecture ({key}={fields[key]!r}); leave model.{key} at "
                                  f"its default, or change only {', '.join(RUN_MODEL_KEYS)}")
        out.model = model_block(**{k: v for k, v in fields.items()})
        if "tokenizer" in out.task and not out.task.tokenizer:
            try:
                out.task.tokenizer = tokenizer_dir(init.hf_dir)
            except ConfigError:
                if need_tokenizer:
                    raise
    elif init.insert_positions:
        raise ConfigError(f"init.insert_positions={tuple(init.insert_positions)}: blocks are "
                          "inserted into a pretrained model; set init.hf_dir")
    return out


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value
