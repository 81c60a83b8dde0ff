"""The training and evaluation programs behind ``python -m sleep_jax.main``.

Data flow of one run::

    config --validate--> task, mesh, ModelConfig, SleepConfig, optimiser
    task.dataset("train") --grain batch--> local rows --to_global--> sharded batch
    (state, batch) --train_step (jit, donated state)--> (state, metrics) --> metrics.jsonl / TB
    every checkpoint_every: CheckpointManager.save(state, data iterator)
    every eval_every and at the end: predict on the eval split --> evaluator --> eval.json + PNG

A run that finds a checkpoint in ``<workdir>/checkpoints`` resumes from it: parameters,
optimiser state, step and the data iterator position are restored, so the following steps see
exactly the batches and produce exactly the losses of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections
from absl import logging
from flax import nnx

from sleep_jax.parallel import batch_sharding, make_mesh
from sleep_jax.train import config as config_lib
from sleep_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from sleep_jax.train.data import to_global, train_iterator
from sleep_jax.train.evaluation import evaluate, write_eval
from sleep_jax.train.metrics import MetricsWriter, Progress, StepTimer
from sleep_jax.train.optimizer import learning_rate_schedule, make_optimizer
from sleep_jax.train.step import (abstract_train_state, init_train_state, make_predict_step,
                                  make_train_step, model_loss_fn, model_predict_fn)


@dataclasses.dataclass
class Experiment:
    """Everything built from a validated config, before any array is allocated."""
    config: ml_collections.ConfigDict
    task: Any
    mesh: jax.sharding.Mesh
    model_config: Any
    sleep: Any
    graphdef: nnx.GraphDef
    create_params: Callable[[], nnx.State]
    optimizer: Any

    @property
    def kinds(self) -> str:
        return self.task.layout.kinds


def setup(config: ml_collections.ConfigDict) -> Experiment:
    """Validates ``config`` (raising ``ValueError`` naming the bad key) and builds the pieces."""
    from sleep_jax import tasks
    from sleep_jax.model import HybridModel

    config_lib.check_structure(config)
    task = tasks.make(config.task)
    config_lib.validate(config, task, jax.device_count())
    mesh = make_mesh(config.mesh)
    model_config = config_lib.model_config(config, task)
    seed = config.train.seed

    def create_params():
        return nnx.split(HybridModel(model_config, rngs=nnx.Rngs(seed)))[1]

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: HybridModel(model_config, rngs=nnx.Rngs(seed))))
    return Experiment(config=config, task=task, mesh=mesh, model_config=model_config,
                      sleep=config_lib.sleep_config(config), graphdef=graphdef,
                      create_params=create_params, optimizer=make_optimizer(config.train))


def _write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1))


def _run_eval(exp: Experiment, predict: Callable, params: Any) -> dict:
    train = exp.config.train
    return evaluate(predict, params, exp.task, batch_size=train.eval_batch_size, seed=train.eval_seed,
                    batch_sharding=batch_sharding(exp.mesh))


def _eval_metrics(result: dict) -> dict[str, float]:
    metrics = {"accuracy": result["accuracy"]}
    metrics.update({f"accuracy/{bucket}": acc for bucket, acc in result["by_difficulty"].items()})
    return metrics


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from the latest checkpoint if any), evaluates, writes eval.json.

    Returns the final eval record (the contents of eval.json).
    """
    exp = setup(config)
    _write_config(workdir, config)
    train_cfg = config.train
    is_main = jax.process_index() == 0
    checkpointer = Checkpointer(workdir, max_to_keep=train_cfg.keep_checkpoints)
    data = train_iterator(exp.task, batch_size=train_cfg.batch_size, seed=train_cfg.seed)
    abstract, shardings = abstract_train_state(exp.create_params, exp.optimizer, exp.mesh)
    if checkpointer.latest_step() is not None:
        logging.info("resuming from %s/%d", checkpointer.directory, checkpointer.latest_step())
        state = checkpointer.restore(abstract_with_shardings(abstract, shardings), data)
    else:
        state, _ = init_train_state(exp.create_params, exp.optimizer, exp.mesh)
    train_step = make_train_step(model_loss_fn(exp.graphdef, sleep=exp.sleep, kinds=exp.kinds),
                                 exp.optimizer, exp.mesh, shardings)
    predict = make_predict_step(model_predict_fn(exp.graphdef, sleep=exp.sleep, kinds=exp.kinds),
                                exp.mesh, shardings["params"])
    muon_lr = learning_rate_schedule(train_cfg.muon_lr, train_cfg)
    adamw_lr = learning_rate_schedule(train_cfg.adamw_lr, train_cfg)
    writer = MetricsWriter(workdir, enabled=is_main)
    progress = Progress(train_cfg.steps)
    inputs = batch_sharding(exp.mesh)
    tokens_per_step = train_cfg.batch_size * exp.task.layout.seq_len

    step = first_step = int(jax.device_get(state["step"]))
    timer = StepTimer(step)
    while step < train_cfg.steps:
        state, metrics = train_step(state, to_global(next(data), inputs))
        step += 1
        log_now = train_cfg.log_every and (step % train_cfg.log_every == 0 or step == train_cfg.steps)
        if log_now or step == first_step + 1:  # the first lap is the compile step alone
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            step_time = timer.lap(step)
        if log_now:
            metrics.update(step_time_s=step_time, tokens_per_s=tokens_per_step / step_time,
                           lr_muon=float(muon_lr(step - 1)), lr_adamw=float(adamw_lr(step - 1)))
            writer.write(step, metrics)
            if is_main:
                progress.log(step, metrics)
        preempted = checkpointer.reached_preemption(step)
        if (train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0) or \
                step == train_cfg.steps or preempted:
            checkpointer.save(step, state, data)
        if preempted:
            checkpointer.close()
            writer.close()
            raise SystemExit(f"preempted: saved step {step} to {checkpointer.directory}; "
                             "rerun the same command to resume")
        if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < train_cfg.steps:
            result = _run_eval(exp, predict, state["params"])
            writer.write(step, _eval_metrics(result), split="eval")
            logging.info("eval at step %d: accuracy %.4f %s", step, result["accuracy"],
                         json.dumps(result["by_difficulty"]))
            timer.restart()  # eval time is not step time
    checkpointer.close()
    result = _run_eval(exp, predict, state["params"])
    writer.write(step, _eval_metrics(result), split="eval")
    writer.close()
    return _finish(exp, workdir, result, step)


def _finish(exp: Experiment, workdir: str, result: dict, step: int) -> dict:
    record = {"task": exp.task.name, "passes": exp.sleep.passes, "step": step, **result}
    if jax.process_index() == 0:
        record = write_eval(workdir, result, task_name=exp.task.name, passes=exp.sleep.passes,
                            step=step)
        logging.info("eval at step %d: accuracy %.4f by difficulty %s -> %s", step,
                     record["accuracy"], json.dumps(record["by_difficulty"]),
                     os.path.join(workdir, "eval.json"))
    return record


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the latest checkpoint in ``workdir`` and writes eval.json / eval.png."""
    exp = setup(config)
    checkpointer = Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints)
    step = checkpointer.latest_step()
    if step is None:
        raise FileNotFoundError(f"--mode=eval: no checkpoint under {checkpointer.directory}")
    abstract, shardings = abstract_train_state(exp.create_params, exp.optimizer, exp.mesh)
    state = checkpointer.restore(abstract_with_shardings(abstract, shardings), None)
    checkpointer.close()
    predict = make_predict_step(model_predict_fn(exp.graphdef, sleep=exp.sleep, kinds=exp.kinds),
                                exp.mesh, shardings["params"])
    result = _run_eval(exp, predict, state["params"])
    return _finish(exp, workdir, result, step)
