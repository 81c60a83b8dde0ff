import json

import pytest

from sleep_jax.plot import (bucket_order, draw_runs, load_eval, main, merge_by_label, plot_runs, summary_table,
                            training_loss)


def write_run(path, passes, by_difficulty, task="rule110", losses=()):
    """A run directory with eval.json and, given ``losses``, a metrics.jsonl of them at steps 1, 2..."""
    path.mkdir()
    record = {"task": task, "passes": passes, "accuracy": 0.5,
              "by_difficulty": by_difficulty, "examples": 64}
    (path / "eval.json").write_text(json.dumps(record))
    if losses:
        (path / "metrics.jsonl").write_text("".join(
            json.dumps({"step": step, "split": "train", "loss": loss}) + "\n"
            for step, loss in enumerate(losses, 1)))
    return str(path)


def test_buckets_sort_by_number():
    assert sorted(["k=16", "k=2", "k=1", "k=8"], key=bucket_order) == ["k=1", "k=2", "k=8", "k=16"]


def test_cli_draws_several_runs_on_one_png(tmp_path, capsys):
    run1 = write_run(tmp_path / "n1", 1, {"t=0": 0.9, "t=1": 0.4})
    run2 = write_run(tmp_path / "n2", 2, {"t=0": 0.95, "t=1": 0.6})
    out = tmp_path / "fig" / "fig.png"
    main([run1, run2, f"--out={out}"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == str(out)


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="no eval.json"):
        load_eval(str(tmp_path))
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_runs([], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="labels: 1 labels for 2 runs"):
        record = {"passes": 1, "by_difficulty": {"t=0": 1.0}}
        plot_runs([record, record], str(tmp_path / "x.png"), labels=["a"])


def test_runs_with_the_same_passes_merge_into_one_line():
    runs = [{"passes": 1, "by_difficulty": {"t=1": 0.4}}, {"passes": 1, "by_difficulty": {"t=2": 0.1}},
            {"passes": 2, "by_difficulty": {"t=1": 0.9}}, {"passes": 2, "by_difficulty": {"t=1": 0.7}}]
    assert merge_by_label(runs) == {"N = 1": {"t=1": 0.4, "t=2": 0.1}, "N = 2": {"t=1": 0.8}}
    assert list(merge_by_label(runs, labels=["a", "b", "a", "b"])) == ["a", "b"]


def test_loss_by_difficulty_gets_its_own_panel_and_seeds_their_spread(tmp_path):
    runs = [{"passes": 1, "by_difficulty": {"k=1": 0.5}, "loss_by_difficulty": {"k=1": 2.0}},
            {"passes": 1, "by_difficulty": {"k=1": 0.7}, "loss_by_difficulty": {"k=1": 1.0}}]
    assert merge_by_label(runs, key="loss_by_difficulty") == {"N = 1": {"k=1": 1.5}}
    assert summary_table(runs).splitlines()[2] == "| N = 1 | 0.600 ± 0.100 (2) |"
    out = plot_runs(runs, str(tmp_path / "two_panels.png"))
    one_panel = plot_runs([{"passes": 1, "by_difficulty": {"k=1": 0.5}}], str(tmp_path / "one_panel.png"))
    from PIL import Image
    assert Image.open(out).width > 1.5 * Image.open(one_panel).width


def test_one_bucket_eval_is_a_bar_against_chance_and_one_beside_the_training_loss(tmp_path):
    """The main job's eval.png: a bar per run with chance and 1.0 marked, beside the training loss
    (metrics.jsonl) on a log scale with the held-out loss as a star; without a training curve the
    held-out loss gets a panel from 0."""
    run = write_run(tmp_path / "run", 1, {"t=0": 1.0}, losses=[0.8, 0.05, 0.0015])
    record = {**load_eval(run), "chance": 1 / 16, "step": 3, "loss": 0.0016,
              "loss_by_difficulty": {"t=0": 0.0016}}
    assert training_loss(run) == {1: 0.8, 2: 0.05, 3: 0.0015} and training_loss(str(tmp_path)) == {}
    fig = draw_runs([record], losses=[training_loss(run)])
    accuracy, curve = fig.axes
    assert [p.get_height() for p in accuracy.patches] == [1.0]
    assert {line.get_ydata()[0] for line in accuracy.lines} == {1 / 16, 1.0}
    assert accuracy.get_ylim()[0] == 0.0 and draw_runs([record]).axes[1].get_ylim()[0] == 0.0
    assert curve.get_yscale() == "log" and list(curve.lines[0].get_ydata()) == [0.8, 0.05, 0.0015]
    assert (curve.lines[1].get_xdata()[0], curve.lines[1].get_ydata()[0]) == (3, 0.0016)
    without = draw_runs([load_eval(run)])   # an eval.json from before chance was recorded
    assert len(without.axes) == 1 and "chance not recorded" in without.axes[0].texts[-1].get_text()


def test_runs_of_different_tasks_are_refused_unless_mixed(tmp_path, capsys):
    runs = [write_run(tmp_path / "r1", 1, {"t=0": 0.9}), write_run(tmp_path / "r2", 2, {"t=0": 1.0}),
            write_run(tmp_path / "d1", 1, {"k=1": 0.7}, task="depo")]
    out = tmp_path / "mixed.png"
    with pytest.raises(ValueError, match=r"^run_dirs: runs of 2 tasks \(depo: 1 run, rule110: 2 runs\); "
                                         r"plot each task alone, or pass --mix_tasks"):
        main([*runs, f"--out={out}"])
    main([*runs, f"--out={out}", "--mix_tasks"])
    assert out.exists()
    legend = draw_runs([load_eval(r) for r in runs], mix_tasks=True).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["rule110 N = 1", "rule110 N = 2", "depo N = 1"]


def test_accuracy_against_mean_passes_labels_each_rule(tmp_path, capsys):
    """--against_passes: fixed-N runs at x = N (records without mean_passes), a learned rule at
    its mean passes, labelled by rule and ponder cost; the table gives mean ± spread per label."""
    runs = []
    for seed, accuracy in ((0, 0.3), (1, 0.5)):
        for passes in (1, 3):
            runs.append(write_run(tmp_path / f"n{passes}_s{seed}", passes, {"t=2": accuracy}))
        path = tmp_path / f"learned_s{seed}"
        path.mkdir()
        (path / "eval.json").write_text(json.dumps({
            "task": "rule110", "passes": 4, "halting": "learned", "halt_threshold": 0.5, "ponder_cost": 0.01,
            "accuracy": accuracy, "by_difficulty": {"t=2": accuracy}, "examples": 64, "mean_passes": 2.0 + seed}))
        runs.append(str(path))
    out = tmp_path / "passes.png"
    main([*runs, f"--out={out}", "--against_passes", "--table"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| N = 3 | 3.00 ± 0.00 | 0.500 ± 0.000 |" in table   # write_run records accuracy 0.5
    assert "| learned, ponder 0.01 (N <= 4) | 2.50 ± 0.50 | 0.400 ± 0.100 | (2.00, 0.300), (3.00, 0.500) |" in table
    bad = tmp_path / "no_mean"
    bad.mkdir()
    (bad / "eval.json").write_text(json.dumps({"task": "rule110", "passes": 4, "halting": "converged",
                                               "tolerance": 0.1, "accuracy": 0.1, "by_difficulty": {}}))
    with pytest.raises(ValueError, match="rule 'converged' lacks mean_passes"):
        main([str(bad), f"--out={out}", "--against_passes"])
