import glob
import json
import os

from sleep_jax.train.metrics import MetricsWriter, Progress, StepTimer, format_duration, read_metrics


def test_writer_appends_jsonl_and_tensorboard_events(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    writer.write(1, {"loss": 2.5, "token_accuracy": 0.25})
    writer.write(2, {"loss": 2.0})
    writer.write(2, {"accuracy": 0.5}, split="eval")
    writer.close()
    resumed = MetricsWriter(str(tmp_path))  # a resumed run logs step 2 again
    resumed.write(2, {"loss": 1.5})
    resumed.close()
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert lines[0] == {"step": 1, "split": "train", "loss": 2.5, "token_accuracy": 0.25}
    assert len(lines) == 4
    assert read_metrics(str(tmp_path)) == {1: {"loss": 2.5, "token_accuracy": 0.25},
                                           2: {"loss": 1.5}}
    assert read_metrics(str(tmp_path), "eval") == {2: {"accuracy": 0.5}}
    events = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
    assert events and all(os.path.getsize(e) > 0 for e in events)


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(str(tmp_path / "run"), enabled=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert not os.path.exists(tmp_path / "run")


def test_progress_line_has_eta_from_measured_steps():
    progress = Progress(total_steps=100)
    first = progress.line(10, {"loss": 1.23456}, now=0.0)
    assert first.startswith("step 10/100 (10%) loss 1.2346") and first.endswith("ETA ?")
    line = progress.line(20, {"loss": 1.0, "token_accuracy": 0.5, "tokens_per_s": 12345.0,
                              "step_time_s": 0.5}, now=5.0)
    # 10 steps took 5 s: 80 steps left -> 40 s.
    assert line == "step 20/100 (20%) loss 1.0000 acc 0.500 | 1.23e+04 tok/s | 500 ms/step | ETA 0:40"


def test_format_duration():
    assert format_duration(65) == "1:05"
    assert format_duration(3725) == "1:02:05"


def test_step_timer_laps():
    import time
    timer = StepTimer(0)
    time.sleep(0.02)
    assert 0.02 <= timer.lap(1) < 0.5
    time.sleep(0.02)
    assert 0.005 <= timer.lap(3) < 0.25  # two steps in one lap
