import glob
import json
import os
import resource
import struct

import pytest
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c

from sleep_jax.train.errors import RunStopped
from sleep_jax.train.metrics import MetricsWriter, Progress, StepTimer, format_duration, read_metrics


def read_events(path):
    """The ``Event`` protos of a TensorBoard event file, each record's checksums checked."""
    events = []
    with open(path, "rb") as f:
        while header := f.read(8):
            assert struct.unpack("I", f.read(4))[0] == masked_crc32c(header)
            data = f.read(struct.unpack("Q", header)[0])
            assert struct.unpack("I", f.read(4))[0] == masked_crc32c(data)
            events.append(Event.FromString(data))
    return events


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
    events = [read_events(path) for path in
              sorted(glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*")))]
    scalars = [(e.step, v.tag, v.simple_value) for file in events for e in file
               for v in e.summary.value]
    assert all(file[0].file_version == "brain.Event:2" for file in events)
    assert sorted(scalars) == sorted([(1, "train/loss", 2.5), (1, "train/token_accuracy", 0.25),
                                      (2, "train/loss", 2.0), (2, "eval/accuracy", 0.5),
                                      (2, "train/loss", 1.5)])


def test_a_failed_write_stops_the_run_naming_the_file_and_leaves_nothing_to_fail(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    writer.write(1, {"loss": 1.0})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # writes past the jsonl's size fail (EFBIG, a short write at the limit), as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(tmp_path / "metrics.jsonl") + 8, hard))
    try:
        with pytest.raises(RunStopped, match=f"^writing {tmp_path}/metrics.jsonl failed: OSError: "):
            writer.write(2, {"loss": 1.0})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    writer.close()  # nothing buffered: closing cannot fail
    assert read_metrics(str(tmp_path)) == {1: {"loss": 1.0}}


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
