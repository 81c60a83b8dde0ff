r"""Train or evaluate a sleep model from a config file.

    python -m sleep_jax.main --config=configs/rule110.py:tiny --workdir=runs/rule110_tiny \
        [--config.sleep.passes=2 --config.train.steps=500 ...] [--mode=train|eval] [--multihost]

    python -m sleep_jax.main --mode=eval --workdir=runs/rule110_tiny \
        [--config=configs/rule110.py:tiny --config.sleep.passes=2]

``--mode=train`` (default) trains, evaluating every ``train.eval_every`` steps and at the end,
checkpointing every ``train.checkpoint_every`` steps; rerunning the same command resumes from
the newest readable checkpoint in ``--workdir`` (changing only the keys listed in
``sleep_jax.train.record.RESUMABLE_KEYS``). It writes ``<workdir>/config.json``, the run's
record, once the config has validated and any restore has succeeded. ``--mode=eval`` evaluates
the newest checkpoint with the run's config.json; ``--config.<block>.<key>=v`` overrides change
it (``--config`` is then needed only to parse them) and the result goes to
``eval-<block>.<key>=v.json`` beside the run's own ``eval.json``. ``--multihost`` joins a
multi-host run (one process per host; see ``launch/``) before anything else touches JAX; it is
the default under ``launch/process.sh`` (``SLEEP_JAX_MULTIHOST=1``). On a machine without a TPU
or GPU, JAX runs on the CPU without trying libtpu (``sleep_jax.cli``). ``--verbosity=1`` also logs
the config.

A workdir holds one run at a time: before anything is compiled, process 0 takes an ``flock`` on
``<workdir>/run.lock`` (``sleep_jax.train.record.lock_run``) and holds it until the process ends,
however it ends (``kill -9`` included: the kernel drops it, so there is no stale lock). A second
process on the same workdir stops at once with one line naming the holder's pid, exit status 1.
``--mode=eval`` takes the lock too, since it writes eval files (evaluate a workdir that is
training from a copy of it, or read it with ``sleep_jax.generate``, which writes nothing there).

A resume never mislabels: a ``train.steps`` below the newest checkpoint's step is refused (a
config error naming ``train.steps``; ``--mode=eval`` evaluates that checkpoint as it is), and
an eval never replaces the record of a later step: an eval of an older checkpoint than the
newest (the newest unreadable) or than the one ``eval.json`` holds writes ``eval@step<k>.json``.

A bad config or input stops with one line starting with the key; a run that cannot go on
(non-finite loss or gradient, no readable checkpoint, a failed save or metrics write, e.g. a
full disk) stops with one line naming the step or the files, the last line on stderr; both with
exit status 1 (``sleep_jax.cli``).
"""
import os

from absl import flags, logging
from ml_collections import config_flags

from sleep_jax import cli

# Unknown keys are let through here so that validation names them (``sleep.foo: unknown key``).
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/rule110.py:tiny.", lock_config=False,
    accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and eval.json.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming) and evaluate; eval: evaluate the latest checkpoint.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", os.environ.get("SLEEP_JAX_MULTIHOST") == "1",
    "Join a multi-process run (jax.distributed.initialize) first; on by default under launch/.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv  # cli.run: none left
    if _MULTIHOST.value:
        from sleep_jax.parallel import initialize_multihost
        initialize_multihost()
    from sleep_jax.train.errors import ConfigError
    from sleep_jax.train.loop import eval_config, evaluate_checkpoint, train
    from sleep_jax.train.stages import check_pretrained_weights, resolve

    if _MODE.value == "train":
        if _CONFIG.value is None:
            raise ConfigError("--config: required for --mode=train")
        # before the workdir is made or anything built:
        resolve(_CONFIG.value, need_tokenizer=False, explicit_model_keys=cli.command_line_keys("model"))
        if _CONFIG.value.init.hf_dir:
            check_pretrained_weights(_CONFIG.value.init.hf_dir)
        run_lock = _lock_workdir(_WORKDIR.value, _MODE.value)  # noqa: F841 - held until exit
        logging.debug("config:\n%s", _CONFIG.value)
        train(_CONFIG.value, _WORKDIR.value)
    else:
        run_lock = _lock_workdir(_WORKDIR.value, _MODE.value)  # noqa: F841 - held until exit
        overrides = flags.FLAGS["config"].override_values if _CONFIG.value is not None else {}
        config = eval_config(_WORKDIR.value, _CONFIG.value, overrides)
        logging.debug("config:\n%s", config)
        evaluate_checkpoint(config, _WORKDIR.value)


def _lock_workdir(workdir: str, mode: str):
    """The workdir's run lock (``train.record.lock_run``), taken by process 0 before anything is
    compiled; the open lock file, or None on the other processes. ``--mode=eval`` locks too (it
    writes eval files), but never creates a workdir: it must hold a run already."""
    import jax

    from sleep_jax.train.errors import ConfigError
    from sleep_jax.train.record import lock_run

    if mode == "eval" and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir}: no such directory; --mode=eval evaluates a "
                          "run's checkpoints")
    return lock_run(workdir) if jax.process_index() == 0 else None


if __name__ == "__main__":
    cli.run(main)
