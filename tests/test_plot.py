import json

import pytest

from sleep_jax.plot import bucket_order, load_eval, main, merge_by_label, plot_runs, summary_table


def write_run(path, passes, by_difficulty):
    path.mkdir()
    record = {"task": "rule110", "passes": passes, "accuracy": 0.5,
              "by_difficulty": by_difficulty, "examples": 64}
    (path / "eval.json").write_text(json.dumps(record))
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
