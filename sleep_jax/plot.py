"""Plots of exact-match accuracy by difficulty, from ``eval.json`` files.

    python -m sleep_jax.plot runs/n1 runs/n2 runs/n4 --out=fig.png [--title=...]

draws one line per number of sleep passes (labelled ``N = <passes>``) over the difficulty
buckets (``t=0, t=1, ...``), like the paper's figures. Runs with the same N are merged into one
line: with one model per t (Rule 110), pass the runs of every t; a bucket scored by several runs
of the same N (e.g. seeds) is drawn at their mean. Training calls ``plot_runs`` for its own run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


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


def merge_by_label(results: Sequence[Mapping],
                   labels: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """``label -> {bucket: accuracy}``, averaging a bucket over the runs that share a label.

    The label of a run is ``labels[i]`` if given, else ``"N = <passes>"``; order of first
    appearance is kept.
    """
    if labels is not None and len(labels) != len(results):
        raise ValueError(f"labels: {len(labels)} labels for {len(results)} runs")
    scores: dict[str, dict[str, list[float]]] = {}
    for index, result in enumerate(results):
        label = labels[index] if labels else f"N = {result['passes']}"
        for bucket, accuracy in result["by_difficulty"].items():
            scores.setdefault(label, {}).setdefault(bucket, []).append(float(accuracy))
    return {label: {b: sum(v) / len(v) for b, v in buckets.items()}
            for label, buckets in scores.items()}


def plot_runs(results: Sequence[Mapping], out: str, *, labels: Sequence[str] | None = None,
              title: str | None = None) -> str:
    """Draws accuracy by difficulty, one line per label, into the PNG ``out``; returns ``out``.

    Raises ``ValueError`` if ``results`` is empty or ``labels`` has another length.
    """
    if not results:
        raise ValueError("results: nothing to plot")
    lines = merge_by_label(results, labels)
    buckets = sorted({b for r in results for b in r["by_difficulty"]}, key=bucket_order)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(buckets) + 2), 3.8))
    for label, by_bucket in lines.items():
        xs = [i for i, b in enumerate(buckets) if b in by_bucket]
        ax.plot(xs, [by_bucket[buckets[i]] for i in xs], marker="o", label=label)
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("difficulty")
    ax.set_ylabel("exact-match accuracy")
    tasks = sorted({str(r.get("task", "")) for r in results})
    ax.set_title(title or " / ".join(tasks))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sleep_jax.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run directories holding eval.json")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    results = [load_eval(d) for d in args.run_dirs]
    print(plot_runs(results, args.out, title=args.title))


if __name__ == "__main__":
    main()
