"""Training metrics: TensorBoard event files, ``metrics.jsonl`` and a progress line with ETA.

Only process 0 writes (the values are global: they come out of the jitted step replicated).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import struct
import time
from typing import Mapping

from absl import logging

from sleep_jax.train.errors import RunStopped


class MetricsWriter:
    """Writes scalar metrics per step to ``<workdir>/metrics.jsonl`` and TensorBoard events
    (``<workdir>/tensorboard/events.out.tfevents.<time>.<host>``).

    Each jsonl line is ``{"step": int, "split": "train"|"eval", <name>: float, ...}``. Appends,
    so a resumed run continues the same file (a step logged twice — once before a crash, once
    after the resume — keeps both lines; readers take the last).

    Both files are written unbuffered in the caller's thread, one ``write`` call per line or
    event (tensorboardX's ``SummaryWriter`` writes from a thread that dies on a full disk, then
    blocks its queue or fails again at exit): a failed write raises ``RunStopped`` naming the
    file where it happens and leaves nothing behind to fail after the run's last line.
    """

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self._jsonl = _AppendFile(os.path.join(workdir, "metrics.jsonl"))
        self._events = _EventFile(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        """Records ``metrics`` (name -> number) at ``step`` under ``split``; ``RunStopped``
        naming the file if a write fails."""
        if not self.enabled:
            return
        values = {name: float(value) for name, value in metrics.items()}
        self._jsonl.write((json.dumps({"step": int(step), "split": split, **values}) + "\n").encode())
        for name, value in values.items():
            # TensorBoard tag names allow [\w./-]: "accuracy/t=0" becomes "accuracy/t_0".
            self._events.scalar(re.sub(r"[^\w./-]", "_", f"{split}/{name}"), value, int(step))

    def close(self) -> None:
        """Closes both files (nothing is buffered, so nothing can fail here)."""
        if self.enabled:
            self.enabled = False
            self._jsonl.close()
            self._events.close()


class _AppendFile:
    """A file opened for appending without a buffer: each ``write`` is on disk whole, or not at
    all (a short write, a full disk's first sign, is cut off again) and raises ``RunStopped``
    naming the file."""

    def __init__(self, path: str):
        self.path = path
        with _failures_stop_the_run(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._file = open(path, "ab", buffering=0)

    def write(self, data: bytes) -> None:
        with _failures_stop_the_run(self.path):
            end = self._file.seek(0, os.SEEK_END)
            try:
                if self._file.write(data) != len(data):
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write)")
            except OSError:
                os.ftruncate(self._file.fileno(), end)
                raise

    def close(self) -> None:
        self._file.close()


class _EventFile(_AppendFile):
    """A TensorBoard event file in ``directory``: TFRecord-framed ``Event`` protos (the framing
    of tensorboardX's ``RecordWriter``), one record per write."""

    def __init__(self, directory: str):
        super().__init__(os.path.join(directory, f"events.out.tfevents.{int(time.time())}."
                                                 f"{socket.gethostname()}"))
        # imported here: only process 0 needs them
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.record_writer import masked_crc32c
        from tensorboardX.summary import scalar

        self._event, self._crc, self._summary = Event, masked_crc32c, scalar
        self._record(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._record(self._event(summary=self._summary(tag, value), step=step, wall_time=time.time()))

    def _record(self, event) -> None:
        data = event.SerializeToString()
        header = struct.pack("Q", len(data))
        self.write(header + struct.pack("I", self._crc(header)) + data + struct.pack("I", self._crc(data)))


@contextlib.contextmanager
def _failures_stop_the_run(path: str):
    """Turns an ``OSError`` (a full disk) into ``RunStopped`` naming ``path``."""
    try:
        yield
    except OSError as error:
        raise RunStopped(f"writing {path} failed: {type(error).__name__}: {error}; "
                         "training stopped") from None


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict[str, float]]:
    """``step -> metrics`` from ``metrics.jsonl``; for a step logged twice the last line wins."""
    out: dict[int, dict[str, float]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.pop("split") == split:
                out[record.pop("step")] = record
    return out


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``; ``65`` -> ``"1:05"``."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Formats ``step 120/300 (40%) loss 0.512 acc 0.81 | 1.2e4 tok/s | 35 ms/step | ETA 0:06``.

    The ETA uses the mean step time since the first measured step (the compile step excluded).
    """

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self._start_step = None
        self._start_time = None

    def eta_seconds(self, step: int, now: float | None = None) -> float | None:
        """Seconds left to ``total_steps`` at ``step``, or None before two measurements."""
        now = time.perf_counter() if now is None else now
        if self._start_step is None:
            self._start_step, self._start_time = step, now
            return None
        done = step - self._start_step
        if done <= 0:
            return None
        return (now - self._start_time) / done * (self.total_steps - step)

    def line(self, step: int, metrics: Mapping[str, float], now: float | None = None) -> str:
        eta = self.eta_seconds(step, now)
        pct = 100.0 * step / max(self.total_steps, 1)
        parts = [f"step {step}/{self.total_steps} ({pct:.0f}%)"]
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "token_accuracy" in metrics:
            parts.append(f"acc {metrics['token_accuracy']:.3f}")
        text = " ".join(parts)
        if "tokens_per_s" in metrics:
            text += f" | {metrics['tokens_per_s']:.3g} tok/s"
        if "step_time_s" in metrics:
            text += f" | {1000 * metrics['step_time_s']:.0f} ms/step"
        text += f" | ETA {format_duration(eta) if eta is not None else '?'}"
        return text

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        logging.info("%s", self.line(step, metrics))


class StepTimer:
    """Mean wall-clock seconds per step between laps (host time, so call it after a sync)."""

    def __init__(self, step: int):
        self._step, self._time = step, time.perf_counter()

    def lap(self, step: int) -> float:
        """Seconds per step since the previous lap (or the start), then starts a new lap."""
        now = time.perf_counter()
        seconds = (now - self._time) / max(step - self._step, 1)
        self._step, self._time = step, now
        return seconds

    def restart(self) -> None:
        """Starts the current lap afresh (after work that is not training, e.g. an eval)."""
        self._time = time.perf_counter()
