"""Training in stages and fine-tuning from a pretrained checkpoint.

``resolve`` turns a config into the run's config: with ``init.hf_dir`` the ``model`` block
becomes the checkpoint's architecture (plus the run's own choices, ``hf.families.RUN_FIELDS``), the
task's tokenizer becomes the checkpoint's. Once the task is built, ``with_total_steps`` makes
``train.steps`` the stages' total (``train.loop.setup_stages`` builds each window's task once).

The stage plan itself (``Stage``, ``stage_plan``) is read from the ``stages`` block with the other
blocks, in ``sleep_jax.train.config`` (``validate`` returns it); here is what each stage runs
with: its task (``stage_tasks``), ``TrainConfig`` and ``SleepConfig``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Collection

import ml_collections

from sleep_jax.train.config import Stage, TrainConfig, check_structure, make_task, model_block, model_config
from sleep_jax.train.errors import ConfigError



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
                              f"{stage.number}: {error}") from None
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


def pretrained_dir_config(hf_dir: str):
    """The ``ModelConfig`` of ``init.hf_dir``: any model directory (``convert.model_dir_kind``:
    a hub checkpoint, a convert directory, a ``sleep_jax.main`` run, e.g. a fine-tuned one)."""
    from sleep_jax import convert, hf
    from sleep_jax.train import record as record_lib

    try:
        kind = convert.model_dir_kind(hf_dir, "init.hf_dir")
        if kind == "hub":
            return hf.model_config(hf.read_hub_config(hf_dir))
        if kind == "convert":
            return convert.read_model_config(hf_dir)
        run = record_lib.load_run_config(hf_dir)
        if run.model.get("vocab_size") is None:
            raise ValueError(f"{os.path.join(hf_dir, convert.RUN_CONFIG)}: model.vocab_size is None (a run "
                             "of a task vocabulary, not a pretrained model)")
        return model_config(run, task=None)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        message = str(error)
        raise ConfigError(message if message.startswith("init.hf_dir=") else
                          f"init.hf_dir={hf_dir!r}: {message}") from None


def check_pretrained_weights(hf_dir: str) -> None:
    """``ConfigError`` naming the file when a hub directory's safetensors files are missing or
    not whole (a truncated download); reads their headers only. A convert directory or
    a run is left to orbax."""
    from sleep_jax import convert, hf
    from sleep_jax.hf.tensors import open_safetensors

    try:
        if convert.model_dir_kind(hf_dir, "init.hf_dir") != "hub":
            return
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        for path in sorted(set(hf.hub_tensor_files(hf_dir).values())):
            with open_safetensors(path):
                pass
    except (ValueError, OSError) as error:
        raise ConfigError(f"init.hf_dir={hf_dir!r}: {error}") from None


def tokenizer_dir(hf_dir: str) -> str:
    """Where ``init.hf_dir``'s tokenizer.json is (``convert.hub_files_dir``: the hub checkpoint
    itself, a convert directory's hub/, a run's own ``init.hf_dir``'s)."""
    from sleep_jax import convert

    try:
        hub = convert.hub_files_dir(hf_dir, "init.hf_dir")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if hub is None or not os.path.exists(os.path.join(hub, "tokenizer.json")):
        raise ConfigError(f"init.hf_dir={hf_dir!r}: no tokenizer.json there (nor in its hub files, "
                          f"{hub}); the fine-tuning data is tokenized with the checkpoint's tokenizer")
    return hub


def resolve(config: ml_collections.ConfigDict, *, need_tokenizer: bool = True,
            explicit_model_keys: Collection[str] = ()) -> ml_collections.ConfigDict:
    """The run's config: a copy of ``config`` where, with ``init.hf_dir`` set, the ``model``
    block is the checkpoint's architecture after ``init.insert_*`` (keeping the given
    ``hf.families.RUN_FIELDS``, and the keys of an inserted kind new to the checkpoint,
    ``model.new_kind_keys``; ``model.loop`` counts the layers after insertion) and an empty
    ``task.tokenizer`` is the checkpoint's (the stages' total steps need the task built:
    ``with_total_steps``). ``ConfigError`` for a model key the run sets (one of
    ``explicit_model_keys``, the command line's ``--config.model.<key>``, or any value other
    than ``model_block``'s default) to a value the checkpoint contradicts: an explicit
    ``--config.model.d_model=128`` against a 16-wide checkpoint is refused like 96 is, though
    128 is the default.
    ``need_tokenizer=False`` (``bench.memory``: shapes only) leaves the character vocabulary when
    the directory has no tokenizer.json; the layout (T, windows) is the same."""
    check_structure(config)
    out = ml_collections.ConfigDict(config.to_dict())
    init = config.init
    if init.hf_dir:
        from sleep_jax.hf.families import RUN_FIELDS
        from sleep_jax.hf.insert import inserted_config
        from sleep_jax.model import new_kind_keys

        pretrained = pretrained_dir_config(init.hf_dir)
        kind_keys = new_kind_keys(pretrained.pattern, init.insert_kind) if init.insert_positions else ()
        run_keys = RUN_FIELDS + kind_keys
        pretrained = dataclasses.replace(pretrained, **{key: config.model[key] for key in kind_keys})
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
            elif ((key in explicit_model_keys or value != defaults[key])
                  and _plain(value) != _plain(fields[key])):
                raise ConfigError(f"model.{key}={value!r}: init.hf_dir={init.hf_dir!r} fixes the "
                                  f"architecture ({key}={fields[key]!r}); leave model.{key} "
                                  f"unset, or change only {', '.join(RUN_FIELDS)}")
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
