"""The engine benchmark on a tiny setting: its row has the reported fields, and a slot's memory
does not grow from 10 to 100 windows read."""
import json

from sleep_jax.bench import engine as bench


def test_engine_bench_row():
    [row] = bench.measure([2], 1, window=4, decode_windows=1, d_model=16, eviction="sliding")
    json.dumps(row)
    assert {"passes", "slots", "decode_ms_per_token", "sleep_ms_per_window", "decode_tokens_per_s"} <= set(row)
    assert (row["passes"], row["slots"]) == (2, 1) and row["decode_ms_per_token"] > 0
    assert row["sleeps_timed"] >= 1 + 90     # while decoding, and while reading windows 10..100
    assert row["device_bytes_after_100_windows"] == row["device_bytes_after_10_windows"]
