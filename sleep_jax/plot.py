"""Plots of exact-match accuracy (and held-out loss) by difficulty, from ``eval.json`` files.

    python -m sleep_jax.plot runs/n1 runs/n2 runs/n4 --out=fig.png [--title=...] [--labels=a,b,c] [--table]
        [--mix_tasks]

draws one line per number of sleep passes (labelled ``N = <passes>``, or by ``--labels``) over the
difficulty buckets (``t=0, t=1, ...``), like the paper's figures, in a panel for accuracy and,
when the results hold ``loss_by_difficulty``, one for the held-out loss; with a single bucket,
one bar per label instead of lines (and the held-out loss only as stars on the training loss). The accuracy panel marks the task's chance level (eval.json's
``chance``) and 1.0; loss axes start at 0. A third panel draws each run's training loss from its
``metrics.jsonl`` (log scale), when there is one. Runs with the same label are merged into one
line: with one model per t (Rule 110), pass the runs of every t; a bucket scored by several runs
of the same label (e.g. seeds) is drawn at their mean, with an error bar of their standard
deviation. Runs of different tasks are refused unless ``--mix_tasks`` (then each label names its
task, so no line joins two tasks' buckets). Training calls ``plot_runs`` for its own run
(``eval.png``).

    python -m sleep_jax.plot runs/fixed_n* runs/learned_* --against_passes --out=fig.png [--table]

draws exact-match accuracy against the mean number of sleep passes per consolidation window
(eval.json's ``mean_passes``; ``passes`` for fixed-N records without it): one point per label
(fixed N joined by a line, each adaptive rule its own marker), error bars = standard deviation
over the label's runs (e.g. seeds) in both directions.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Mapping, Sequence

import matplotlib
import matplotlib.figure
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
    """``run_dir/eval.json`` as a dict (``task``, ``passes``, ``accuracy``, ``by_difficulty``...);
    ``run_dir`` may also name an eval record itself (``.../eval-sleep.passes=2.json``)."""
    path = run_dir if run_dir.endswith(".json") and os.path.isfile(run_dir) else os.path.join(run_dir, "eval.json")
    if not os.path.exists(path):
        raise ValueError(f"{run_dir!r}: no eval.json (has the run finished its evaluation?)")
    with open(path) as f:
        return json.load(f)


# Result keys drawn, each in its own panel: {key: y-axis label}.
PANELS = {"by_difficulty": "exact-match accuracy", "loss_by_difficulty": "held-out loss (nats)"}


def training_loss(run_dir: str) -> dict[int, float]:
    """``step -> training loss`` (nats) from ``run_dir/metrics.jsonl``; empty without the file."""
    from sleep_jax.train.metrics import read_metrics

    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        return {}
    return {step: m["loss"] for step, m in read_metrics(run_dir, "train").items() if "loss" in m}


def check_one_task(results: Sequence[Mapping], mix_tasks: bool = False) -> None:
    """ValueError unless every result is of one task (or ``mix_tasks``): different tasks'
    difficulty buckets (``t=0``, ``k=1``) do not belong on one axis."""
    counts: dict[str, int] = {}
    for task in (str(result.get("task", "?")) for result in results):
        counts[task] = counts.get(task, 0) + 1
    if len(counts) > 1 and not mix_tasks:
        held = ", ".join(f"{task}: {count} run{'s' if count > 1 else ''}"
                         for task, count in sorted(counts.items()))
        raise ValueError(f"run_dirs: runs of {len(counts)} tasks ({held}); plot each task "
                         "alone, or pass --mix_tasks to draw them on one figure")


def run_labels(results: Sequence[Mapping], labels: Sequence[str] | None = None) -> list[str]:
    """The label of each run: ``labels[i]`` if given, else ``"N = <passes>"``; prefixed with the
    run's task when the runs hold several tasks."""
    if labels is not None and len(labels) != len(results):
        raise ValueError(f"labels: {len(labels)} labels for {len(results)} runs")
    names = list(labels) if labels else [_default_label(result) for result in results]
    if len({str(result.get("task", "?")) for result in results}) > 1:
        names = [f"{result.get('task', '?')} {name}" for result, name in zip(results, names)]
    return names


def _default_label(result: Mapping) -> str:
    """``N = <passes>`` for fixed N; for an adaptive rule its name, its key and the cap, e.g.
    ``learned, ponder 0.01 (N <= 4)``."""
    rule = result.get("halting")
    if rule is None:
        return f"N = {result['passes']}"
    key = f"ponder {result['ponder_cost']:g}" if rule == "learned" else f"tolerance {result['tolerance']:g}"
    return f"{rule}, {key} (N <= {result['passes']})"


def mean_passes(result: Mapping) -> float:
    """Mean sleep passes per consolidation window of a run: eval.json's ``mean_passes``, else
    (a fixed-N record written before it existed) ``passes``."""
    if "mean_passes" in result:
        return float(result["mean_passes"])
    if "halting" in result:
        raise ValueError(f"an eval record of rule {result['halting']!r} lacks mean_passes")
    return float(result["passes"])


def values_by_label(results: Sequence[Mapping], labels: Sequence[str] | None = None,
                    key: str = "by_difficulty") -> dict[str, dict[str, list[float]]]:
    """``label -> {bucket: [value of each run]}`` for the result key ``key`` (labels:
    ``run_labels``); order of first appearance is kept. Runs without ``key`` are skipped."""
    values: dict[str, dict[str, list[float]]] = {}
    for label, result in zip(run_labels(results, labels), results):
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


def _draw_by_bucket(ax, values: Mapping[str, Mapping[str, list[float]]], buckets: list[str],
                    colors: Mapping[str, str]) -> None:
    """One bar per label when there is one bucket (its name on the x axis), else one line per
    label over the buckets; the mean over runs, error bar = standard deviation."""
    if len(buckets) == 1:
        names = [label for label, by_bucket in values.items() if buckets[0] in by_bucket]
        for x, label in enumerate(names):
            runs = values[label][buckets[0]]
            mean = float(np.mean(runs))
            ax.bar(x, mean, width=0.6, color=colors[label],
                   yerr=np.std(runs) if len(runs) > 1 else None, capsize=4)
            ax.annotate(f"{mean:.3f}", (x, mean), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom")
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.75, len(names) - 0.25)
        ax.set_xlabel(f"difficulty {buckets[0]}")
        return
    for label, by_bucket in values.items():
        xs = [i for i, b in enumerate(buckets) if b in by_bucket]
        ys = [by_bucket[buckets[i]] for i in xs]
        ax.errorbar(xs, [np.mean(v) for v in ys], yerr=[np.std(v) if len(v) > 1 else 0.0 for v in ys],
                    marker="o", capsize=3, label=label, color=colors[label])
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_xlabel("difficulty")
    ax.legend()


def _mark_chance(ax, results: Sequence[Mapping]) -> None:
    """Dashed lines at each chance level the results record and a dotted line at 1.0, each
    named right of the axes (where no bar or line can cover the name)."""
    def mark(value, text, **style):
        ax.axhline(value, linewidth=1, zorder=3, **style)
        ax.annotate(text, (1.0, value), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", ha="left", va="center", fontsize=8,
                    color=style["color"], annotation_clip=False)

    mark(1.0, "1.0: all\nright", color="black", linestyle=":")
    chances = sorted({round(float(r["chance"]), 6) for r in results if "chance" in r})
    for chance in chances:
        mark(chance, f"chance\n{chance:.3g}", color="dimgrey", linestyle="--")
    if not chances:
        ax.annotate("chance not recorded in eval.json", (0.02, 0.03), xycoords="axes fraction", fontsize=8)
    ax.set_ylim(0.0, 1.12)


def _draw_training_loss(ax, results: Sequence[Mapping], names: Sequence[str],
                        losses: Sequence[Mapping[int, float]], colors: Mapping[str, str]) -> None:
    """Each run's training loss over steps (log scale; one legend entry per label), and its
    held-out loss (``loss``) as a star at its eval step."""
    shown = set()
    for label, by_step in zip(names, losses):
        if by_step:
            steps = sorted(by_step)
            ax.plot(steps, [by_step[s] for s in steps], color=colors[label],
                    label=label if label not in shown else None)
            shown.add(label)
    for result, label in zip(results, names):
        if "loss" in result and "step" in result:
            ax.plot([result["step"]], [result["loss"]], marker="*", markersize=11, linestyle="none",
                    color=colors[label], markeredgecolor="black",
                    label="held-out loss" if "held-out" not in shown else None)
            shown.add("held-out")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats, log scale)")
    ax.legend()


def passes_table(results: Sequence[Mapping], labels: Sequence[str] | None = None) -> str:
    """A markdown table, one row per label: mean passes per consolidation window and exact-match
    accuracy (``mean ± standard deviation`` over its runs), and each run's (passes, accuracy)."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for label, result in zip(run_labels(results, labels), results):
        rows.setdefault(label, []).append((mean_passes(result), float(result["accuracy"])))
    lines = ["| run | mean passes per window | exact match | per run (passes, accuracy) |", "| --- | --- | --- | --- |"]
    for label, runs in rows.items():
        passes, accuracy = np.array(runs).T
        each = ", ".join(f"({p:.2f}, {a:.3f})" for p, a in runs)
        lines.append(f"| {label} | {passes.mean():.2f} ± {passes.std():.2f} | {accuracy.mean():.3f} ± "
                     f"{accuracy.std():.3f} | {each} |")
    return "\n".join(lines)


def draw_accuracy_by_passes(results: Sequence[Mapping], *, labels: Sequence[str] | None = None,
                            title: str | None = None) -> matplotlib.figure.Figure:
    """Exact-match accuracy against mean sleep passes per consolidation window: one point per
    label (mean over its runs, error bars = standard deviation in both), the fixed-N labels
    joined by a line, each adaptive label a marker of its own."""
    if not results:
        raise ValueError("results: nothing to plot")
    check_one_task(results)
    names = run_labels(results, labels)
    points: dict[str, list[tuple[float, float]]] = {}
    for label, result in zip(names, results):
        points.setdefault(label, []).append((mean_passes(result), float(result["accuracy"])))
    fixed = {label for label, result in zip(names, results) if "halting" not in result}
    fig, ax = plt.subplots(figsize=(9.0, 4.4))
    summary = {label: (np.mean(np.array(runs), axis=0), np.std(np.array(runs), axis=0))
               for label, runs in points.items()}
    line = sorted((label for label in summary if label in fixed), key=lambda label: summary[label][0][0])
    if line:
        ax.plot([summary[label][0][0] for label in line], [summary[label][0][1] for label in line],
                color="grey", linewidth=1, zorder=1)
    markers = iter("s^Dv<>ph*")
    for i, (label, (mean, spread)) in enumerate(summary.items()):
        ax.errorbar(mean[0], mean[1], xerr=spread[0], yerr=spread[1], marker="o" if label in fixed else next(markers),
                    markersize=7, capsize=3, linestyle="none", color=f"C{i}", label=label)
    chances = sorted({round(float(r["chance"]), 6) for r in results if "chance" in r})
    for chance in chances:
        ax.axhline(chance, color="dimgrey", linestyle="--", linewidth=1, label=f"chance {chance:.3g}")
    ax.set_xlabel("mean sleep passes per consolidation window")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))   # beside the axes: no point hidden
    ax.set_title(title or str(results[0].get("task", "")))
    fig.tight_layout()
    return fig


def plot_runs(results: Sequence[Mapping], out: str, *, against_passes: bool = False, **options) -> str:
    """``draw_runs(results, **options)`` (``draw_accuracy_by_passes`` with ``against_passes``)
    written to the PNG ``out``; returns ``out``."""
    if against_passes:
        options.pop("losses", None)
        options.pop("mix_tasks", None)
        fig = draw_accuracy_by_passes(results, **options)
    else:
        fig = draw_runs(results, **options)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def draw_runs(results: Sequence[Mapping], *, labels: Sequence[str] | None = None,
              title: str | None = None, losses: Sequence[Mapping[int, float]] | None = None,
              mix_tasks: bool = False) -> matplotlib.figure.Figure:
    """A figure of each of ``PANELS`` the results hold by difficulty (one line per label, or one
    bar per label with a single bucket; mean, error bar = standard deviation over runs; chance and
    1.0 marked on accuracy; loss from 0) and, when ``losses`` (each run's ``step -> training
    loss``, see ``training_loss``) hold any, the training loss (log scale).

    Raises ``ValueError`` if ``results`` is empty, ``labels`` or ``losses`` has another length,
    or the runs hold several tasks without ``mix_tasks``.
    """
    if not results:
        raise ValueError("results: nothing to plot")
    if losses is not None and len(losses) != len(results):
        raise ValueError(f"losses: {len(losses)} curves for {len(results)} runs")
    check_one_task(results, mix_tasks)
    names = run_labels(results, labels)
    colors = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(names))}
    with_curves = losses is not None and any(losses)
    buckets = sorted({b for r in results for key in PANELS for b in r.get(key, {})}, key=bucket_order)
    # With one bucket, the training-loss panel's stars are the held-out losses: no panel of its own.
    panels = [key for key in PANELS if any(key in r for r in results)
              and not (key == "loss_by_difficulty" and with_curves and len(buckets) == 1)]
    width = max(4.8, 0.9 * len(buckets) + 2, 1.1 * len(colors) + 1.5)
    count = len(panels) + with_curves
    fig, axes = plt.subplots(1, count, figsize=(width * count, 4.0), squeeze=False)
    for ax, key in zip(axes[0], panels):
        _draw_by_bucket(ax, values_by_label(results, labels, key), buckets, colors)
        if key == "by_difficulty":
            _mark_chance(ax, results)
        else:
            ax.set_ylim(bottom=0.0)
        ax.set_ylabel(PANELS[key])
        ax.grid(alpha=0.3)
    if with_curves:
        _draw_training_loss(axes[0][-1], results, names, losses, colors)
        axes[0][-1].grid(alpha=0.3, which="both")
    tasks = sorted({str(r.get("task", "")) for r in results})
    fig.suptitle(title or " / ".join(tasks))
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m sleep_jax.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run directories holding eval.json, or eval records (.json)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--table", action="store_true", help="also print markdown tables (mean ± std over runs)")
    parser.add_argument("--labels", default=None, help="comma-separated, one label per run directory")
    parser.add_argument("--mix_tasks", action="store_true",
                        help="draw runs of different tasks on one figure (labels name the task)")
    parser.add_argument("--against_passes", action="store_true",
                        help="accuracy against mean sleep passes per window, one point per label (adaptive sleep)")
    args = parser.parse_args(argv)
    results = [load_eval(d) for d in args.run_dirs]
    labels = args.labels.split(",") if args.labels else None
    if args.against_passes and args.mix_tasks:
        raise ValueError("--against_passes draws one task; drop --mix_tasks")
    print(plot_runs(results, args.out, labels=labels, title=args.title, against_passes=args.against_passes,
                    losses=[training_loss(d) for d in args.run_dirs], mix_tasks=args.mix_tasks))
    if args.table and args.against_passes:
        print(passes_table(results, labels))
    elif args.table:
        for key in PANELS:
            if any(key in r for r in results):
                print(summary_table(results, labels, key))


if __name__ == "__main__":
    cli.run_argparse(main)
