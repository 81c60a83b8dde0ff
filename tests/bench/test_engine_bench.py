"""The engine benchmark on a tiny setting: its rows have the reported fields, a slot's memory does
not grow from 10 to 100 windows read, slots filling together sleep in one call, and the engine's
first token matches the model's forward."""
import json

from sleep_jax.bench import engine as bench
from sleep_jax.bench.models import bench_model_config


def test_engine_bench_row():
    [row] = bench.measure([2], 1, window=4, decode_windows=1, d_model=16, eviction="sliding")
    json.dumps(row)
    assert {"passes", "slots", "decode_ms_per_token", "sleep_ms_per_window", "decode_tokens_per_s"} <= set(row)
    assert (row["passes"], row["slots"]) == (2, 1) and row["decode_ms_per_token"] > 0
    assert row["sleeps_timed"] >= 1 + 90     # while decoding, and while reading windows 10..100
    assert row["device_bytes_after_100_windows"] == row["device_bytes_after_10_windows"]


def test_batched_sleep_and_first_token_rows():
    row = bench.measure_batched_sleep(2, passes=1, window=4, d_model=16, eviction="hard", repeats=2)
    json.dumps(row)
    assert row["sleep_calls_per_round"] == {"together": 1, "one_by_one": 2}
    assert row["sleep_ms_per_window_together"]["min"] > 0 and row["ratio_together_over_one_by_one"]["median"] > 0
    row = bench.measure_first_token(3, window=4, repeats=2, config=bench_model_config(16))   # checks the logits
    json.dumps(row)
    assert row["engine_prefill_ms"]["min"] > 0 and row["model_forward_ms"]["min"] > 0
    assert {"load_average", "ratio_engine_over_forward"} <= set(row)


def test_halting_rows_compare_an_adaptive_rule_with_fixed_n():
    """A learned rule whose head stops at once (bias +6) against fixed N = 3 on padding and content
    windows of the tiny Rule 110 task: rows per window kind, 1 pass against 3."""
    from flax import nnx

    from configs import rule110
    from sleep_jax import tasks
    from sleep_jax.model import HybridModel, ModelConfig
    from sleep_jax.sleep import SleepConfig

    task = tasks.make(rule110.get_config("tiny").task)
    model = HybridModel(ModelConfig(vocab_size=task.vocab.size, d_model=16, pattern="AG", attn_heads=2,
                                    attn_kv_heads=1, attn_head_dim=8, gdn_heads=1, gdn_v_heads=1, gdn_head_dim=8,
                                    gdn_v_head_dim=8, mlp_hidden=32, delta_rule_impl="recurrent", chunk_size=16,
                                    halting_head=True), rngs=nnx.Rngs(0))
    model.halting_head.weight[...] = model.halting_head.weight[...].at[-1, 0].set(6.0)   # the bias
    sleep = SleepConfig(passes=3, window=task.layout.window, halting="learned")
    rows = bench.measure_halting(model, sleep, task, stream_windows=2)
    json.dumps(rows)
    assert [row["window_kind"] for row in rows] == ["padding", "content"]
    for row in rows:
        assert row["adaptive_mean_passes"] == 1 and row["fixed_mean_passes"] == 3
        assert row["adaptive_sleep_ms_per_window"]["min"] > 0 and row["ratio_adaptive_over_fixed"] > 0
