"""Plots of exact-match accuracy (and held-out loss) by difficulty, from ``eval.json`` files.

    python -m sleep_jax.plot runs/n1 runs/n2 runs/n4 --out=fig.png [--title=...] [--labels=a,b,c] [--table]

draws one line per number of sleep passes (labelled ``N = <passes>``, or by ``--labels``) over the
difficulty buckets (``t=0, t=1, ...``), like the paper's figures, in a panel for accuracy and,
when the results hold ``loss_by_difficulty``, one for the held-out loss. Runs with the same label
are merged into one line: with one model per t (Rule 110), pass the runs of every t; a bucket
scored by several runs of the same label (e.g. seeds) is drawn at their mean, with an error bar
of their standard deviation. Training calls ``plot_runs`` for its own run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from sleep_jax import cli  # noqa: E402


def bucket_order(name: str) -> tuple:
    """Sort key for bucket names: ``"k=2" < "k=16"`` (by the number after ``=`` when there is one)."""
    match = re.fullmatch(r"(.*?)=?(-?\d+(?:\.\d+)?)", name)
    if match:
        return (match.group(1), float(match.group(2)), name)
    return (name, float("inf"), name)


def load_eval(run_dir: str) -> dict:
    """``run_dir/eval.json`` as a dict (``task``, ``passes``, ``accuracy``, ``by_difficulty``...)."""
    path = os.path.join(run_dir, "eval.json")
    if not os.path.exists(path):
        raise ValueError(f"{run_dir!r}: no eval.json (has the run finished its evaluation?)")
    with open(path) as f:
        return json.load(f)


# Result keys drawn, each in its own panel: {key: y-axis label}.
PANELS = {"by_difficulty": "exact-match accuracy", "loss_by_difficulty": "held-out loss (nats)"}


def values_by_label(results: Sequence[Mapping], labels: Sequence[str] | None = None,
                    key: str = "by_difficulty") -> dict[str, dict[str, list[float]]]:
    """``label -> {bucket: [value of each run]}`` for the result key ``key``.

    The label of a run is ``labels[i]`` if given, else ``"N = <passes>"``; order of first
    appearance is kept. Runs without ``key`` are skipped.
    """
    if labels is not None and len(labels) != len(results):
        raise ValueError(f"labels: {len(labels)} labels for {len(results)} runs")
    values: dict[str, dict[str, list[float]]] = {}
    for index, result in enumerate(results):
        label = labels[index] if labels else f"N = {result['passes']}"
        for bucket, value in result.get(key, {}).items():
            values.setdefault(label, {}).setdefault(bucket, []).append(float(value))
    return values


def merge_by_label(results: Sequence[Mapping], labels: Sequence[str] | None = None,
                   key: str = "by_difficulty") -> dict[str, dict[str, float]]:
    """``label -> {bucket: mean over the runs that share the label}`` (see ``values_by_label``)."""
    return {label: {b: float(np.mean(v)) for b, v in buckets.items()}
            for label, buckets in values_by_label(results, labels, key).items()}


def summary_table(results: Sequence[Mapping], labels: Sequence[str] | None = None,
                  key: str = "by_difficulty") -> str:
    """A markdown table of ``key``: one row per label, one column per bucket, each cell
    ``mean ± standard deviation (number of runs)``."""
    values = values_by_label(results, labels, key)
    buckets = sorted({b for by_bucket in values.values() for b in by_bucket}, key=bucket_order)
    lines = ["| " + " | ".join([PANELS.get(key, key), *buckets]) + " |", "|" + " --- |" * (len(buckets) + 1)]
    for label, by_bucket in values.items():
        cells = [f"{np.mean(by_bucket[b]):.3f} ± {np.std(by_bucket[b]):.3f} ({len(by_bucket[b])})"
                 if b in by_bucket else "" for b in buckets]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def plot_runs(results: Sequence[Mapping], out: str, *, labels: Sequence[str] | None = None,
              title: str | None = None) -> str:
    """Draws each of ``PANELS`` the results hold by difficulty, one line per label (mean, error bar
    = standard deviation over runs), into the PNG ``out``; returns ``out``.

    Raises ``ValueError`` if ``results`` is empty or ``labels`` has another length.
    """
    if not results:
        raise ValueError("results: nothing to plot")
    panels = [key for key in PANELS if any(key in r for r in results)]
    buckets = sorted({b for r in results for key in panels for b in r.get(key, {})}, key=bucket_order)
    width = max(5.5, 0.9 * len(buckets) + 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.8), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for label, by_bucket in values_by_label(results, labels, key).items():
            xs = [i for i, b in enumerate(buckets) if b in by_bucket]
            ys = [by_bucket[buckets[i]] for i in xs]
            ax.errorbar(xs, [np.mean(v) for v in ys], yerr=[np.std(v) if len(v) > 1 else 0.0 for v in ys],
                        marker="o", capsize=3, label=label)
        ax.set_xticks(range(len(buckets)), buckets)
        if key == "by_difficulty":
            ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("difficulty")
        ax.set_ylabel(PANELS[key])
        ax.grid(alpha=0.3)
        ax.legend()
    tasks = sorted({str(r.get("task", "")) for r in results})
    fig.suptitle(title or " / ".join(tasks))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m sleep_jax.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run directories holding eval.json")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--table", action="store_true", help="also print markdown tables (mean ± std over runs)")
    parser.add_argument("--labels", default=None, help="comma-separated, one label per run directory")
    args = parser.parse_args(argv)
    results = [load_eval(d) for d in args.run_dirs]
    labels = args.labels.split(",") if args.labels else None
    print(plot_runs(results, args.out, labels=labels, title=args.title))
    if args.table:
        for key in PANELS:
            if any(key in r for r in results):
                print(summary_table(results, labels, key))


if __name__ == "__main__":
    cli.run_argparse(main)
