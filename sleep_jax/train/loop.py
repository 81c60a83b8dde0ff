"""The training and evaluation programs behind ``python -m sleep_jax.main``.

Data flow of one run::

    config --validate--> task, mesh, ModelConfig, SleepConfig, optimiser
    task.dataset("train") --grain batch--> local rows --to_global--> sharded batch
    (state, batch) --train_step (jit, donated state)--> (state, metrics) --> metrics.jsonl / TB
    every checkpoint_every: CheckpointManager.save(state, data iterator)
    every eval_every and at the end: predict on the eval split --> evaluator --> eval.json + PNG

A run that finds a checkpoint in ``<workdir>/checkpoints`` resumes from the newest readable one:
parameters, optimiser state, step and the data iterator position are restored, so the following
steps see exactly the batches and produce exactly the losses of an uninterrupted run.

A run never lies and never loses work: a non-finite loss or gradient stops it (``RunStopped``,
naming the step and the last good checkpoint) before anything non-finite is saved or evaluated;
a failed save stops it at the next step; ``config.json`` is the run's record (see ``train``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import ml_collections
from absl import logging
from flax import nnx

from sleep_jax.model import HybridModel, ModelConfig
from sleep_jax.parallel import batch_sharding, make_mesh
from sleep_jax.sleep import SleepConfig
from sleep_jax.windows import kinds_from_mask
from sleep_jax.tasks.task import Task
from sleep_jax.train import config as config_lib
from sleep_jax.train import record as record_lib
from sleep_jax.train import stages as stages_lib
from sleep_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from sleep_jax.train.data import to_global, train_iterator
from sleep_jax.train.evaluation import evaluate, write_eval
from sleep_jax.train.errors import ConfigError, RunStopped
from sleep_jax.train.metrics import MetricsWriter, Progress, StepTimer
from sleep_jax.train.optimizer import make_optimizer, trainable_mask
from sleep_jax.train.step import (abstract_train_state, init_train_state, make_predict_step,
                                  make_train_step, model_loss_fn, model_predict_fn,
                                  train_state_from_params)


@dataclasses.dataclass
class Experiment:
    """Everything built from a validated config for one stage, before any array is allocated."""
    config: ml_collections.ConfigDict  # resolved; train.steps the stages' total
    train: config_lib.TrainConfig      # this stage's: its steps and learning rates
    task: Task                         # this stage's window
    mesh: jax.sharding.Mesh
    model_config: ModelConfig
    sleep: SleepConfig                 # this stage's window and eviction
    graphdef: nnx.GraphDef
    create_params: Callable[[], nnx.State]   # random init (also what abstract shapes come from)
    initial_params: Callable[[], nnx.State] | None   # the pretrained parameters (init.hf_dir)
    optimizer: Any
    stage: config_lib.Stage
    trainable: Any                     # bool per parameter array (optimizer.trainable_mask)

    def train_steps(self, state_shardings: Any) -> Callable[[str], Callable]:
        """``kinds -> step``: the jitted train step of batches whose window kinds are ``kinds``,
        compiled on first use (a task whose answers sit in different windows has a few)."""
        return functools.cache(lambda kinds: make_train_step(
            model_loss_fn(self.graphdef, sleep=self.sleep, kinds=kinds), self.optimizer, self.mesh,
            state_shardings, trainable=self.trainable, accum_steps=self.train.grad_accum_steps))

    def predicts(self, param_shardings: Any) -> Callable[[str], Callable]:
        """``kinds -> predict``: the jitted predict step per window kinds, as ``train_steps``."""
        return functools.cache(lambda kinds: make_predict_step(
            model_predict_fn(self.graphdef, sleep=self.sleep, kinds=kinds), self.mesh, param_shardings))

    def batch_kinds(self, batch: dict) -> str:
        """The window kinds of a (host) batch, from its loss mask (``sleep.kinds_from_mask``)."""
        return kinds_from_mask(batch["loss_mask"], self.task.layout.window)


def setup(config: ml_collections.ConfigDict) -> Experiment:
    """``setup_stages(config)[-1]``: the last stage, whose window and eviction are the run's
    evaluation setting."""
    return setup_stages(config)[-1]


def setup_stages(config: ml_collections.ConfigDict) -> list[Experiment]:
    """Validates a resolved ``config`` (``stages_lib.resolve``; raising ``ConfigError`` naming
    the bad key) and builds the pieces of every stage, in order (every stage's config checked
    before any runs). Each window's task is built once (a dataset is tokenized once per window),
    the model's shapes once. Every experiment's ``config`` is ``config`` with ``train.steps`` the
    stages' total (``stages_lib.with_total_steps``): the run's record."""
    config_lib.check_structure(config)
    task = config_lib.make_task(config)
    stages = config_lib.validate(config, task, jax.device_count())
    config = stages_lib.with_total_steps(config, stages)
    tasks = stages_lib.stage_tasks(config, stages, task)
    model_config = config_lib.model_config(config, task)
    abstract = nnx.eval_shape(lambda: HybridModel(model_config, rngs=nnx.Rngs(config.train.seed)))
    return [_setup_stage(config, tasks[stage.window], stage, model_config, abstract)
            for stage in stages]


def _setup_stage(config: ml_collections.ConfigDict, task: Task, stage: config_lib.Stage,
                 model_config: ModelConfig, abstract: HybridModel) -> Experiment:
    """The pieces of one ``stage`` of a validated ``config``: ``task`` at the stage's window,
    ``abstract`` the model (``nnx.eval_shape``) of ``model_config``."""
    train = stages_lib.stage_train_config(config_lib.train_config(config), stage)
    mesh = make_mesh(config.mesh)

    def create_params():
        return nnx.split(HybridModel(model_config, rngs=nnx.Rngs(train.seed)))[1]

    trainable = trainable_mask(nnx.split(abstract)[1], stage.trainable)
    if not any(jax.tree.leaves(trainable)):
        raise ConfigError(f"stages.trainable={tuple(config.stages.trainable)!r}: stage "
                          f"{stage.number}'s filter {','.join(stage.trainable)!r} matches no "
                          f"parameter (paths look like blocks/0/mixer/w_q, embedding)")
    initial_params = None
    if config.init.hf_dir:
        def initial_params():
            return pretrained_params(config, abstract)
    return Experiment(config=config, train=train, task=task, mesh=mesh,
                      model_config=model_config, sleep=stages_lib.stage_sleep_config(config, stage),
                      graphdef=nnx.graphdef(abstract), create_params=create_params,
                      initial_params=initial_params,
                      optimizer=make_optimizer(train, stage.trainable), stage=stage,
                      trainable=trainable)


def pretrained_params(config: ml_collections.ConfigDict, abstract: Any) -> nnx.State:
    """The parameters ``init.hf_dir`` gives, laid into the run model's structure ``abstract``
    (cast to its parameter dtype): the model of any model directory (``convert.load_model``: a
    hub checkpoint, a convert directory, a run's newest checkpoint), then ``init.insert_*``
    through ``hf.insert.insert_blocks`` (seeded by ``train.seed``)."""
    from sleep_jax import convert
    from sleep_jax.hf.insert import insert_blocks

    init = config.init
    model = convert.load_model(init.hf_dir, "init.hf_dir")
    if init.insert_positions:
        model = insert_blocks(model, tuple(init.insert_positions), init.insert_kind,
                              mlp=bool(init.insert_mlp), seed=config.train.seed)
    source = nnx.state(model, nnx.Param).to_pure_dict()
    state = nnx.split(abstract)[1]
    target = state.to_pure_dict()
    state.replace_by_pure_dict(jax.tree.map(lambda value, like: jax.numpy.asarray(value, like.dtype),
                                            source, target))
    return state


def _run_eval(exp: Experiment, predicts: Callable[[str], Callable], params: Any) -> dict:
    return evaluate(predicts, params, exp.task, batch_size=exp.train.eval_batch_size,
                    seed=exp.train.eval_seed, batch_sharding=batch_sharding(exp.mesh))


def _eval_metrics(result: dict) -> dict[str, float]:
    metrics = {"accuracy": result["accuracy"]}
    metrics.update({f"accuracy/{bucket}": acc for bucket, acc in result["by_difficulty"].items()})
    if "mean_passes" in result:
        metrics["passes"] = result["mean_passes"]
    return metrics


def _check_finite(state: dict, checkpointer: Checkpointer, metrics: dict | None = None) -> None:
    """Raises ``RunStopped`` if the train step has met a non-finite loss or gradient (one scalar
    read: call it where the loop syncs anyway). Nothing after the last good step was applied."""
    bad_step = int(jax.device_get(state["diverged_at_step"]))
    if not bad_step:
        return
    checkpointer.wait_until_finished()
    latest = checkpointer.latest_step()
    last_good = f"{checkpointer.path(latest)} (step {latest})" if latest is not None else "none"
    seen = f" (loss {metrics['loss']:.4g}, grad_norm {metrics['grad_norm']:.4g})" if metrics else ""
    raise RunStopped(f"step {bad_step}: the loss or gradient is not finite{seen}; training "
                     f"stopped before saving or evaluating anything after step {bad_step - 1}; "
                     f"last good checkpoint: {last_good}; lower train.muon_lr / "
                     f"train.adamw_lr or set train.grad_clip > 0")


def _stage_of_step(exps: list[Experiment], step: int) -> int:
    """The stage whose state a checkpoint at ``step`` holds: first_step < step <= last_step."""
    for index, exp in enumerate(exps):
        if step <= exp.stage.last_step:
            return index
    return len(exps) - 1


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains through the config's stages (resuming from the newest readable checkpoint, in
    its stage), evaluates, writes eval.json.

    ``config`` is resolved first (``stages_lib.resolve``: the pretrained architecture and
    tokenizer; ``setup_stages``: the stages' total steps). The run's ``config.json`` is compared
    with it before any array is built (a key outside ``record_lib.RESUMABLE_KEYS`` that differs stops the run)
    and written only once the config has validated and any restore has succeeded. The step
    counter runs on across stages; each stage ends with a saved checkpoint, and the next starts
    a fresh optimiser (its own trainable set, learning rates and schedule) and data iterator
    from the parameters at that step. Returns the final eval record (eval.json). Raises
    ``ConfigError`` (bad config) or ``RunStopped`` (divergence, no readable checkpoint, a
    failed save).
    """
    exps = setup_stages(stages_lib.resolve(config))
    config = exps[0].config  # with the stages' total steps: the run's record
    stored = record_lib.load_run_config(workdir)
    if stored is not None:
        record_lib.check_resume(stored, config, os.path.join(workdir, record_lib.RUN_CONFIG))
    first = exps[0]
    train_cfg = config_lib.train_config(config)
    is_main = jax.process_index() == 0
    checkpointer = Checkpointer(workdir, max_to_keep=train_cfg.keep_checkpoints,
                                save_every=train_cfg.checkpoint_every)
    latest = checkpointer.latest_step()
    if latest is not None:
        record_lib.check_resume_steps(train_cfg.steps, latest, checkpointer.path(latest))
    index = 0 if latest is None else _stage_of_step(exps, latest)
    exp = exps[index]
    data = train_iterator(exp.task, batch_size=train_cfg.batch_size, seed=train_cfg.seed)
    abstract, shardings = abstract_train_state(exp.create_params, exp.optimizer, exp.mesh)
    if latest is not None:
        restored_step, state = checkpointer.restore_newest_readable(
            abstract_with_shardings(abstract, shardings), data, set_aside_unreadable=True)
        logging.info("resuming from %s (stage %d)", checkpointer.path(restored_step),
                     exps[index].stage.number)
    elif first.initial_params is not None:
        state, _ = train_state_from_params(first.initial_params(), first.optimizer, first.mesh)
    else:
        state, _ = init_train_state(first.create_params, first.optimizer, first.mesh)
    if is_main:
        record_lib.write_run_config(workdir, config)
    writer = MetricsWriter(workdir, enabled=is_main)
    progress = Progress(train_cfg.steps)
    step = int(jax.device_get(state["step"]))
    timer = StepTimer(step)
    try:
        for index in range(index, len(exps)):
            if exps[index] is not exp:  # a new stage: fresh optimiser and data from here
                exp = exps[index]
                logging.info("stage %d from step %d: %d steps, trainable %s, %s eviction, L=%d",
                             exp.stage.number, step, exp.stage.steps, ",".join(exp.stage.trainable),
                             exp.sleep.eviction, exp.sleep.window)
                state, shardings = train_state_from_params(state["params"], exp.optimizer,
                                                           exp.mesh, step)
                data = train_iterator(exp.task, batch_size=train_cfg.batch_size,
                                      seed=train_cfg.seed)
            state, predicts = _train_stage(exp, state, shardings, data, checkpointer, writer,
                                           progress, timer, step)
            step = exp.stage.last_step
        _check_finite(state, checkpointer)
    except BaseException as error:
        writer.close()
        if isinstance(error, SystemExit):  # preempted: its save must have finished, or say so
            checkpointer.close()
        else:
            checkpointer.close_quietly()  # the error in flight is the one to report
        raise
    checkpointer.close()  # raises RunStopped if a background save failed
    result = _run_eval(exp, predicts, state["params"])
    writer.write(step, _eval_metrics(result), split="eval")
    writer.close()
    return _finish(exp, workdir, result, step, name="eval")


def _train_stage(exp: Experiment, state: dict, shardings: Any, data: Any,
                 checkpointer: Checkpointer, writer: MetricsWriter, progress: Progress,
                 timer: StepTimer, step: int) -> tuple[dict, Callable]:
    """Steps from ``step`` to the stage's last step (saved, forced); returns the state and the
    stage's predict steps (``Experiment.predicts``)."""
    train_cfg, last_step = exp.train, exp.stage.last_step
    is_main = jax.process_index() == 0
    train_steps, predicts = exp.train_steps(shardings), exp.predicts(shardings["params"])
    inputs = batch_sharding(exp.mesh)
    tokens_per_step = train_cfg.batch_size * exp.task.layout.seq_len
    first_step = step
    if is_main and step < last_step:
        logging.info("step %d: compiling the train step (XLA; the first step waits for it)", step + 1)
    while step < last_step:
        batch = next(data)
        state, metrics = train_steps(exp.batch_kinds(batch))(state, to_global(batch, inputs))
        step += 1
        log_now = train_cfg.log_every and (step % train_cfg.log_every == 0 or step == last_step)
        if log_now or step == first_step + 1:  # the first lap is the compile step alone
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            step_time = timer.lap(step)
            if is_main and step == first_step + 1:
                logging.info("step %d: compiled and ran in %.1f s%s", step, step_time,
                             f"; progress every {train_cfg.log_every} steps" if train_cfg.log_every else "")
        if log_now:
            metrics.update(step_time_s=step_time, tokens_per_s=tokens_per_step / step_time,
                           stage=exp.stage.number)
            writer.write(step, metrics)
            if is_main:
                progress.log(step, metrics)
            _check_finite(state, checkpointer, metrics)
        checkpointer.check_saved()
        final = step == last_step
        preempted = checkpointer.reached_preemption(step)
        if final or preempted or checkpointer.should_save(step):
            _check_finite(state, checkpointer)
            checkpointer.save(step, state, data, force=final or preempted)
        if preempted:  # every process saved at this step; the caller waits for it
            raise SystemExit(f"preempted: saved step {step} to {checkpointer.directory}; "
                             "rerun the same command to resume")
        if train_cfg.eval_every and step % train_cfg.eval_every == 0 and not final:
            _check_finite(state, checkpointer)
            result = _run_eval(exp, predicts, state["params"])
            writer.write(step, _eval_metrics(result), split="eval")
            logging.info("eval at step %d: accuracy %.4f %s", step, result["accuracy"],
                         json.dumps(result["by_difficulty"]))
            timer.restart()  # eval time is not step time
    return state, predicts


def _finish(exp: Experiment, workdir: str, result: dict, step: int, name: str,
            newest_step: int | None = None) -> dict:
    """Writes the eval record of ``step`` (process 0; ``write_eval``: an older step than
    ``newest_step`` or than ``<name>.json``'s goes to its own file) and returns it."""
    record = {"task": exp.task.name, "passes": exp.sleep.passes, "step": step, **exp.sleep.halting_record,
              **result}
    if jax.process_index() == 0:
        record, path = write_eval(workdir, result, task_name=exp.task.name,
                                  passes=exp.sleep.passes, step=step, name=name,
                                  newest_step=newest_step, halting=exp.sleep.halting_record)
        logging.info("eval at step %d: accuracy %.4f by difficulty %s -> %s", step,
                     record["accuracy"], json.dumps(record["by_difficulty"]), path)
    return record


def _workdir_kind(workdir: str) -> str:
    """``convert.model_dir_kind`` of ``--workdir``, "run" for a directory with no model files (a
    run with checkpoints only, or none)."""
    from sleep_jax import convert

    try:
        return convert.model_dir_kind(workdir, "--workdir")
    except ValueError:
        return "run"


def eval_config(workdir: str, given: ml_collections.ConfigDict | None,
                overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """The config ``--mode=eval`` uses: a run's config.json with the command line's
    ``--config.<block>.<key>`` ``overrides``; ``given`` (the whole ``--config``) for a directory
    without a run record. A hub checkpoint or convert directory has no task, so it needs
    ``given``, and is the model evaluated (``init.hf_dir``: its parameters, no checkpoint)."""
    kind = _workdir_kind(workdir)
    stored = record_lib.load_run_config(workdir) if kind == "run" else None
    if stored is not None:
        return record_lib.with_overrides(stored, overrides)
    if given is None:
        if kind != "run":
            raise ConfigError(f"--config: --workdir={workdir!r} is a {kind} directory, which has no task; "
                              f"--mode=eval needs --config naming one (e.g. configs/gsm_finetune.py:tiny)")
        raise ConfigError(f"--config: {os.path.join(workdir, record_lib.RUN_CONFIG)} does not "
                          f"exist, so --mode=eval needs the run's --config")
    if kind != "run":
        if given.init.hf_dir and os.path.abspath(given.init.hf_dir) != os.path.abspath(workdir):
            raise ConfigError(f"init.hf_dir={given.init.hf_dir!r}: --mode=eval on {kind} directory "
                              f"--workdir={workdir!r} evaluates that directory's model; leave init.hf_dir unset")
        given = ml_collections.ConfigDict(given.to_dict())
        given.init.hf_dir = workdir
    return stages_lib.resolve(given)


def restore_newest(exps: list[Experiment], workdir: str) -> tuple[int, dict, dict, int]:
    """``(step, state, shardings, newest)`` of the newest readable checkpoint in ``workdir``
    (``newest``: the newest checkpoint's step, above ``step`` when that one is unreadable), for
    evaluation or serving (no data iterator, nothing set aside), read with the optimiser of the
    stage it was written in (a run may be evaluated mid-way); ``RunStopped`` if there is none."""
    checkpointer = Checkpointer(workdir, max_to_keep=exps[-1].train.keep_checkpoints)
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            raise RunStopped(f"{workdir}: no checkpoint under {checkpointer.directory}")
        exp = exps[_stage_of_step(exps, latest)]
        abstract, shardings = abstract_train_state(exp.create_params, exp.optimizer, exp.mesh)
        step, state = checkpointer.restore_newest_readable(
            abstract_with_shardings(abstract, shardings), None, set_aside_unreadable=False)
    finally:
        checkpointer.close()
    return step, state, shardings, latest


def restore_run(workdir: str, config: ml_collections.ConfigDict | None = None
                ) -> tuple[HybridModel, list[Experiment]]:
    """(model, experiments) of the newest readable checkpoint of the ``sleep_jax.main`` run in
    ``workdir``, built from ``config`` (default: the run's config.json); ``RunStopped`` if it
    has no readable checkpoint."""
    if config is None:
        config = record_lib.load_run_config(workdir)
        if config is None:
            raise ConfigError(f"{os.path.join(workdir, record_lib.RUN_CONFIG)}: does not exist "
                              f"(not a sleep_jax.main run directory)")
    exps = setup_stages(config)
    _, state, _, _ = restore_newest(exps, workdir)
    return nnx.merge(exps[-1].graphdef, state["params"]), exps


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the newest readable checkpoint in ``workdir`` with ``config`` (see
    ``eval_config``). Writes ``eval.json`` / ``eval.png`` when ``config`` is the run's own, or
    ``eval-<tag>.json`` / ``.png`` naming the settings that differ (e.g.
    ``eval-sleep.passes=2.json``), never over the run's own. An eval of an older checkpoint
    than the newest (the newest unreadable) writes ``eval@step<k>`` (``write_eval``)."""
    exps = setup_stages(config)
    exp = exps[-1]
    if _workdir_kind(workdir) != "run":
        tag, step, newest = None, 0, None   # a hub checkpoint or convert directory (``eval_config``): its own parameters
        state, shardings = train_state_from_params(exp.initial_params(), exp.optimizer, exp.mesh)
    else:
        tag = record_lib.eval_tag(record_lib.load_run_config(workdir), config)
        step, state, shardings, newest = restore_newest(exps, workdir)
    result = _run_eval(exp, exp.predicts(shardings["params"]), state["params"])
    return _finish(exp, workdir, result, step, name=f"eval-{tag}" if tag else "eval",
                   newest_step=newest)
