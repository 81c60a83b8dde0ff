"""The engine benchmark on a tiny setting: its row has the reported fields, and a slot's memory
does not grow from 10 to 100 windows read."""
import json

from sleep_jax.bench import engine as bench


def test_engine_bench_row():
    rows = bench.measure([1, 2], 2, window=4, decode_windows=1, d_model=16, eviction="sliding")
    assert [row["passes"] for row in rows] == [1, 2]
    row = rows[1]
    json.dumps(row)
    assert {"passes", "slots", "decode_ms_per_token", "sleep_ms_per_window", "decode_tokens_per_s"} <= set(row)
    assert (row["passes"], row["slots"]) == (2, 2) and row["decode_ms_per_token"] > 0
    assert row["sleeps_timed"] >= 2 + 90     # while decoding (both slots), and reading windows 10..100
    assert row["device_bytes_after_100_windows"] == row["device_bytes_after_10_windows"]
