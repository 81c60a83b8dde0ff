"""Training metrics: TensorBoard event files, ``metrics.jsonl`` and a progress line with ETA.

Only process 0 writes (the values are global: they come out of the jitted step replicated).
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Mapping

from absl import logging


class MetricsWriter:
    """Writes scalar metrics per step to ``<workdir>/metrics.jsonl`` and TensorBoard events.

    Each jsonl line is ``{"step": int, "split": "train"|"eval", <name>: float, ...}``. Appends,
    so a resumed run continues the same file (a step logged twice — once before a crash, once
    after the resume — keeps both lines; readers take the last).
    """

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
        from tensorboardX import SummaryWriter  # imported here: only process 0 needs it
        self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        """Records ``metrics`` (name -> number) at ``step`` under ``split``."""
        if not self.enabled:
            return
        values = {name: float(value) for name, value in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        for name, value in values.items():
            # TensorBoard tag names allow [\w./-]: "accuracy/t=0" becomes "accuracy/t_0".
            tag = re.sub(r"[^\w./-]", "_", f"{split}/{name}")
            self._tb.add_scalar(tag, value, global_step=int(step))

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            self.enabled = False


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
