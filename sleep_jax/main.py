r"""Train or evaluate a sleep model from a config file.

    python -m sleep_jax.main --config=configs/rule110.py:tiny --workdir=runs/rule110_tiny \
        [--config.sleep.passes=2 --config.train.steps=500 ...] [--mode=train|eval] [--multihost]

``--mode=train`` (default) trains, evaluating every ``train.eval_every`` steps and at the end,
checkpointing every ``train.checkpoint_every`` steps; rerunning the same command resumes from
the latest checkpoint in ``--workdir``. ``--mode=eval`` evaluates the latest checkpoint.
Both write ``<workdir>/eval.json`` and ``<workdir>/eval.png``. ``--multihost`` joins a multi-host
run (one process per host; see ``launch/``) before anything else touches JAX; it is the default
under ``launch/process.sh`` (``SLEEP_JAX_MULTIHOST=1``). On a machine without a TPU or GPU, JAX
runs on the CPU without trying libtpu.
"""
import logging as std_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/rule110.py:tiny.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and eval.json.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming) and evaluate; eval: evaluate the latest checkpoint.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", os.environ.get("SLEEP_JAX_MULTIHOST") == "1",
    "Join a multi-process run (jax.distributed.initialize) first; on by default under launch/.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
    """absl log filter: keeps warnings and errors of checkpointing internals, drops their INFO."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    from sleep_jax.parallel import initialize_multihost, use_cpu_without_accelerator
    use_cpu_without_accelerator()
    if _MULTIHOST.value:
        initialize_multihost()
    from sleep_jax.train.loop import evaluate_checkpoint, train

    logging.info("config:\n%s", _CONFIG.value)
    if _MODE.value == "train":
        train(_CONFIG.value, _WORKDIR.value)
    else:
        evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
