r"""How much memory a recipe's training step needs per device: compiled abstractly, no weights and
no accelerator.

    python -m sleep_jax.bench.memory --config=configs/gsm_finetune.py:paper \
        --config.init.hf_dir=DIR --tpu=v5p:2x2x2 --passes=1,6 --remat=pass [--gpus=8]

``DIR`` needs only the checkpoint's ``config.json`` (the architecture); no weight is read, and
without its tokenizer files the task's layout is computed with the character vocabulary (the
same T and windows: lengths are counted in whatever tokens the task has). For each N (``--passes``) and remat choice, the run's
training step (loss over the sleep windows, gradient, optimiser update, state donated) of its
last stage is built on abstract arrays sharded over a mesh (``config.mesh`` resolved over the
target's devices) and compiled:

- ``--tpu=TOPOLOGY``: for that TPU slice by the real XLA:TPU compiler through libtpu's
  compile-only client (as ``bench.tpu_compile``); nothing runs.
- ``--gpus=G``: for a G-GPU mesh there is no GPU compiler here, so the same step is compiled by
  the CPU compiler over G CPU devices with the same shardings: its numbers are labelled
  ``"estimate": true`` (XLA:GPU fuses and schedules differently; parameter and optimiser bytes
  are exact, activation and peak bytes are the CPU compiler's).

One JSON line per (target, N, remat): ``param_bytes`` and ``optimizer_bytes`` per device (from the
shardings: the shard shape of every array), ``activation_bytes`` (XLA's temp bytes: what the step
holds besides its arguments and outputs), ``peak_bytes`` (argument + output - alias + temp), the
mesh shape, ``batch`` (global rows per step), ``grad_accum_steps`` and ``micro_batch`` (rows of one
micro-batch over all devices: ``batch / grad_accum_steps``, whose activations are what is live),
compile seconds; or ``error``. A step that does not fit a TPU chip fails to compile
(RESOURCE_EXHAUSTED); its row still has ``activation_bytes`` and the chip's ``hbm_bytes``, read
from XLA:TPU's message, whose "G" are GiB (a v5p chip: 95.74 GiB = 102.8 GB).
"""
from __future__ import annotations

import json
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh
from ml_collections import config_flags

from sleep_jax import cli
from sleep_jax.bench.programs import failure, peak_bytes
from sleep_jax.parallel.mesh import MESH_AXES, mesh_shape
from sleep_jax.parallel.rules import batch_sharding
from sleep_jax.sleep import SleepConfig


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags (defined only when run as a command: `bench.sleep` and `bench.engine`
    have flags of the same names, and tests import these modules together)."""
    config_flags.DEFINE_config_file("config", None, "Recipe, e.g. configs/gsm_finetune.py:paper.",
                                    lock_config=False, flag_values=flag_values)
    flags.DEFINE_string("tpu", None, "Compile-only TPU topology, e.g. v5p:2x2x2 or v5e:2x4.",
                        flag_values=flag_values)
    flags.DEFINE_integer("gpus", 0, "Also estimate for a mesh of this many GPUs (CPU compiler).",
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_list("passes", ["1"], "Values of N (sleep.passes).", flag_values=flag_values)
    flags.DEFINE_list("remat", ["pass"], "Values of sleep.remat.", flag_values=flag_values)
    flags.mark_flag_as_required("config", flag_values=flag_values)
    cli.check_flags_as_fields(SleepConfig, "passes", "remat", flag_values=flag_values)


# XLA:TPU's out-of-memory message, sizes in GiB: "... the total memory required for HLO
# temporaries (96.86G) exceeds available HBM (95.74G)."
_TPU_OUT_OF_MEMORY = re.compile(r"HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)")


def out_of_memory(message: str) -> dict:
    """``activation_bytes`` and ``hbm_bytes`` from XLA:TPU's out-of-memory message; {} for another."""
    match = _TPU_OUT_OF_MEMORY.search(message)
    if match is None:
        return {}
    temp, hbm = (round(float(gib) * 2**30) for gib in match.groups())
    return dict(activation_bytes=temp, hbm_bytes=hbm)


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
               for leaf in jax.tree.leaves(tree))


def step_memory(config, devices, *, estimate: bool) -> dict:
    """Compiles the training step of ``config`` (resolved) over a mesh of ``devices``; one row."""
    from sleep_jax.train.checkpoint import abstract_with_shardings
    from sleep_jax.train.loop import setup
    from sleep_jax.train.step import abstract_train_state, make_train_step, model_loss_fn

    exp = setup(config)
    shape = mesh_shape(dict(config.mesh), len(devices))
    mesh = Mesh(np.array(devices).reshape(shape), MESH_AXES)
    abstract, shardings = abstract_train_state(exp.create_params, exp.optimizer, mesh)
    state = abstract_with_shardings(abstract, shardings)
    rows = (exp.train.batch_size, exp.task.layout.seq_len)
    accum = exp.train.grad_accum_steps   # micro-batches of rows[0] // accum rows, one at a time
    tokens = jax.ShapeDtypeStruct(rows, jnp.int32, sharding=batch_sharding(mesh, ndim=2))
    step = make_train_step(model_loss_fn(exp.graphdef, sleep=exp.sleep, kinds=exp.task.layout.kinds),
                           exp.optimizer, mesh, shardings, trainable=exp.trainable,
                           accum_steps=accum)
    row = dict(passes=exp.sleep.passes, remat=exp.sleep.remat, mesh=dict(zip(MESH_AXES, shape)),
               batch=rows[0], grad_accum_steps=accum, micro_batch=rows[0] // accum,
               seq_len=rows[1], window=exp.sleep.window, estimate=estimate,
               param_bytes=shard_bytes(state["params"]), optimizer_bytes=shard_bytes(state["opt_state"]))
    start = time.perf_counter()
    try:
        compiled = step.compile(state, {"tokens": tokens, "loss_mask": tokens})
    except Exception as exc:  # noqa: BLE001 -- reported in the row
        return dict(row, error=failure(exc), **out_of_memory(str(exc)))
    memory = compiled.memory_analysis()
    return dict(row, activation_bytes=int(memory.temp_size_in_bytes), peak_bytes=peak_bytes(compiled),
                compile_s=round(time.perf_counter() - start, 1))


def table(config, targets: dict, passes, remats, explicit_model_keys=()) -> list[dict]:
    """Rows for every target (name -> (devices, estimate)), N and remat (``explicit_model_keys``:
    the model keys given on the command line, see ``train.stages.resolve``)."""
    from sleep_jax.train import record as record_lib
    from sleep_jax.train import stages as stages_lib

    out = []
    for name, (devices, estimate) in targets.items():
        for n in passes:
            for remat in remats:
                variant = stages_lib.resolve(
                    record_lib.with_overrides(config, {"sleep.passes": int(n), "sleep.remat": remat}),
                    need_tokenizer=False, explicit_model_keys=explicit_model_keys)
                out.append(dict(target=name, **step_memory(variant, devices, estimate=estimate)))
    return out


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.gpus:
        jax.config.update("jax_num_cpu_devices", FLAGS.gpus)
    from sleep_jax.bench.tpu_compile import tpu_device  # noqa: F401 -- libtpu check below
    targets = {}
    if FLAGS.tpu:
        from jax.experimental import topologies
        targets[f"tpu:{FLAGS.tpu}"] = (topologies.get_topology_desc(
            topology_name=FLAGS.tpu, platform="tpu").devices, False)
    if FLAGS.gpus:
        targets[f"gpu:{FLAGS.gpus} (estimate: CPU compiler)"] = (jax.devices("cpu")[:FLAGS.gpus], True)
    if not targets:
        raise app.UsageError("give --tpu=TOPOLOGY and/or --gpus=G")
    for row in table(FLAGS.config, targets, FLAGS.passes, FLAGS.remat, cli.command_line_keys("model")):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    cli.run(main, define_flags)
