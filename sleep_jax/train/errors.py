"""The two kinds of error the main job reports as one line, without a traceback.

- ``ConfigError``: a bad config or input; the message starts with the key at fault
  (``train.seed=-1: must be an int >= 0``). ``sleep_jax.main`` turns it into an absl
  ``UsageError``.
- ``RunStopped``: the run cannot go on (diverged, no readable checkpoint, a failed save); the
  message names the step and the files involved. ``sleep_jax.main`` exits with status 1.
"""


class ConfigError(ValueError):
    """A config or input error; one line starting with the key at fault."""


class RunStopped(RuntimeError):
    """Training or evaluation stopped; one line naming the step and the files involved."""
