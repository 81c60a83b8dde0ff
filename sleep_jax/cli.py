"""The shared entry of every command: ``cli.run(main)`` in place of ``absl.app.run(main)``.

Before ``main`` runs, ``run``
- parses the flags (``parse_flags``): a bad flag, a missing config file or a config override that
  cannot be applied is one line on stderr, exit status 1;
- makes JAX use the CPU on a machine without a TPU or GPU, before anything starts a backend
  (``parallel.use_cpu_without_accelerator``: no libtpu error and source trace), and there keeps
  freed host memory in the process (``parallel.keep_freed_host_memory``: XLA:CPU's temporaries
  are not faulted in again on every step);
- keeps the INFO lines of checkpointing internals (orbax) and one harmless orbax warning off
  stderr (``QuietLibraries``).
While ``main`` runs, a ``ConfigError`` or ``absl.app.UsageError`` (bad config, flag or input)
becomes its one line, a ``RunStopped`` ``run stopped: <its line>``; both exit with status 1.
So on a CPU machine stderr holds progress lines and at most one error line.

Commands with argparse flags (``plot``, ``train.sweep``) call ``run_argparse(main)`` and parse with
``cli.ArgumentParser``: the same one-line errors, without JAX.
"""
from __future__ import annotations

import argparse
import logging as std_logging
import os
import sys
from typing import Callable, NoReturn, Sequence

from absl import app, flags, logging

from sleep_jax.train.errors import ConfigError, RunStopped


# orbax's warning when a checkpoint item has no metadata file of its own: the items of a step
# saved by a CheckpointManager never do (the step has it), and every restore's shape check
# (train.checkpoint) reads one item's metadata.
_NO_ITEM_METADATA = "Metadata file does not exist: %s"


class QuietLibraries:
    """absl log filter: keeps warnings and errors of checkpointing internals (orbax), drops
    their INFO and the harmless ``_NO_ITEM_METADATA`` warning."""

    def filter(self, record) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        return record.levelno >= std_logging.WARNING and record.msg != _NO_ITEM_METADATA


def fail(message: str) -> NoReturn:
    """Ends the command with ``message`` as one line on stderr and exit status 1."""
    sys.stderr.write(" ".join(str(message).split()) + "\n")
    sys.exit(1)


def _last_value(argv: list[str], name: str) -> str | None:
    """The last value ``argv`` gives flag ``name`` (``--name=v`` or ``--name v``), or None."""
    value = None
    for k, arg in enumerate(argv):
        if arg in (f"--{name}", f"-{name}") and k + 1 < len(argv):
            value = argv[k + 1]
        elif arg.startswith((f"--{name}=", f"-{name}=")):
            value = arg.split("=", 1)[1]
    return value


def _missing_config_file(flag_values: flags.FlagValues, argv: list[str]) -> str | None:
    """``--<name>=<file>: no such config file`` for a config-file flag in ``argv`` whose file does
    not exist (ml_collections names it only as ``<name>_config`` once the config is read). Read
    from ``argv``: a config flag with overrides fails to parse before it records its file."""
    from ml_collections import config_flags

    for name in flag_values:
        try:
            config_flags.get_config_filename(flag_values[name])
        except TypeError:  # not a config-file flag
            continue
        except flags.Error:  # a config-file flag, not parsed (yet)
            pass
        filename = _last_value(argv, name)
        if filename is not None and not os.path.isfile(filename.split(":", 1)[0]):
            return f"--{name}={filename}: no such config file"
    return None


def _flag_error_line(error: Exception) -> str:
    """One line of a flag error: a config file's own error keeps its last line, not the trace
    ml_collections puts in the message."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)  # no repr
    if "Traceback (most recent call last)" in text:
        head = text.split(":", 2)[:2] if text.startswith("flag --") else []
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = ":".join(head + [" " + last]) if head else last
    return text


def parse_into(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
    """``flag_values(argv)`` (the arguments left); ``ConfigError``, one line, for any error: a bad
    value, a missing config file, an override that cannot be applied (a misspelled block,
    ``--config.trian.steps=2``)."""
    missing = _missing_config_file(flag_values, argv)
    if missing:
        raise ConfigError(missing)
    try:
        return flag_values(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as error:
        raise ConfigError(_flag_error_line(error)) from None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing of the command's flags (``parse_into``); an error ends the command."""
    try:
        return parse_into(flags.FLAGS, argv)
    except ConfigError as error:
        fail(str(error))


def command_line_keys(block: str, flag: str = "config") -> list[str]:
    """The keys of config ``block`` set on the command line (``--<flag>.<block>.<key>=v``): a
    fine-tune refuses any its checkpoint contradicts, even at the default
    (``train.stages.resolve``'s ``explicit_model_keys``)."""
    return [key.partition(".")[2] for key in flags.FLAGS[flag].override_values
            if key.startswith(f"{block}.")]


def check_flags_as_fields(fields_class: type, *names: str,
                          flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Registers a parse-time check of flags named like fields of ``fields_class`` (a dataclass
    that checks its own values: ``SleepConfig``, ``Sampling``): each value (each item of a list
    flag; None = unset) must make a valid ``fields_class(**{name: value})``, so a bad one is one
    line naming the flag before anything is loaded or compiled."""
    def check(name, values):
        for value in values if isinstance(values, list) else [values]:
            try:
                if value is not None:
                    fields_class(**{name: value})
            except (ValueError, TypeError) as error:
                raise flags.ValidationError(str(error)) from None
        return True

    for name in names:
        flags.register_validator(name, lambda values, name=name: check(name, values),
                                 flag_values=flag_values)


def _start(main: Callable[[list[str]], None], argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(QuietLibraries())
    from sleep_jax.parallel import keep_freed_host_memory, runs_on_cpu, use_cpu_without_accelerator

    use_cpu_without_accelerator()
    if runs_on_cpu():
        keep_freed_host_memory()
    try:
        main(argv)
    except (ConfigError, app.UsageError) as error:
        fail(str(error))
    except RunStopped as error:
        fail(f"run stopped: {error}")


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None] | None = None) -> None:
    """A command's ``if __name__ == "__main__":``: defines its flags (``define_flags``, for a
    module whose flags would clash with another's on import), then runs ``main(argv)`` as the
    module docstring describes."""
    if define_flags is not None:
        define_flags()
    app.run(lambda argv: _start(main, argv), flags_parser=parse_flags)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for ``run_argparse`` commands: a usage error is one line naming the command,
    exit status 1, as with the absl commands (not argparse's usage block and status 2)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}")


def run_argparse(main: Callable[[Sequence[str] | None], None]) -> None:
    """``main()`` of a command with argparse flags; a ``ValueError`` (bad input: its message
    names the flag or file) is one line, exit status 1."""
    try:
        main(None)
    except ValueError as error:
        fail(str(error))
