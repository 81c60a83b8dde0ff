"""The sleep benchmark's memory claim, on a tiny model: with per-pass remat an extra pass costs
its carry and nothing more; without remat it costs all of the pass's activations."""
import json

import pytest
from flax import nnx

from sleep_jax.bench import sleep as bench
from sleep_jax.model import HybridModel, ModelConfig
from sleep_jax.sleep import SleepConfig


@pytest.fixture(scope="module")
def records():
    config = ModelConfig(vocab_size=32, d_model=32, pattern="G", attn_heads=2, attn_kv_heads=1, attn_head_dim=16,
                         gdn_heads=2, gdn_v_heads=2, gdn_head_dim=16, gdn_v_head_dim=16, mlp_hidden=64,
                         delta_rule_impl="recurrent", chunk_size=16)
    model = HybridModel(config, rngs=nnx.Rngs(0))
    records = {(remat, n): bench.measure(model, batch=2, sleep=SleepConfig(passes=n, window=8, remat=remat),
                                         sleeping_windows=3, repeats=5, run=remat == "pass")
               for remat in ("pass", "none") for n in (1, 8)}
    records[("none", 8, "truncate 1")] = bench.measure(
        model, batch=2, sleep=SleepConfig(passes=8, window=8, truncate_passes=1), sleeping_windows=3, run=False)
    records[("pass", 8, "converged")] = bench.measure(
        model, batch=2, sleep=SleepConfig(passes=8, window=8, remat="pass", halting="converged", tolerance=1e9),
        sleeping_windows=3, repeats=5)
    return records


def test_records_have_the_reported_fields(records):
    record = records[("pass", 8)]
    assert {"passes", "remat", "peak_bytes", "carry_bytes", "step_ms"} <= set(record)
    json.dumps(record)
    # carry: hidden [2, 8, 32] f32 + GDN S [2, 2, 16, 16] f32 + conv tail [2, 3, 96] f32, x 3 windows
    assert record["carry_bytes"] == 3 * (2 * 8 * 32 * 4 + 2 * 2 * 16 * 16 * 4 + 2 * 3 * 96 * 4)


def test_a_window_that_stops_early_sleeps_faster(records):
    """converged with a huge tolerance: the first window (entered with S = 0) stops after 2 passes,
    the others after 1, so eval-time sleep runs 4 of 24 passes; training still runs all 8."""
    fixed, converged = records[("pass", 8)], records[("pass", 8, "converged")]
    assert fixed["mean_passes"] == 8 and converged["mean_passes"] == round(4 / 3, 3)
    assert converged["sleep_ms_per_window"] < fixed["sleep_ms_per_window"] / 2, (converged, fixed)


def test_per_pass_remat_keeps_only_each_extra_pass_carry(records):
    growth = records[("pass", 8)]["peak_bytes"] - records[("pass", 1)]["peak_bytes"]
    carry = records[("pass", 1)]["carry_bytes"]
    assert growth <= 1.1 * 7 * carry, (growth, carry)
    assert records[("pass", 8)]["step_ms"] > 2 * records[("pass", 1)]["step_ms"]


def test_without_remat_memory_grows_far_more(records):
    remat_growth = records[("pass", 8)]["peak_bytes"] - records[("pass", 1)]["peak_bytes"]
    plain_growth = records[("none", 8)]["peak_bytes"] - records[("none", 1)]["peak_bytes"]
    assert plain_growth > 5 * max(remat_growth, records[("pass", 1)]["carry_bytes"]), (plain_growth, remat_growth)


def test_truncated_backprop_keeps_only_the_differentiated_passes(records):
    """truncate_passes = 1 of N = 8, no remat: the 7 undifferentiated passes keep no activations, so
    the peak is about that of N = 1 and far below N = 8's."""
    truncated = records[("none", 8, "truncate 1")]
    assert truncated["truncate_passes"] == 1
    assert truncated["peak_bytes"] < 1.2 * records[("none", 1)]["peak_bytes"], truncated
    assert truncated["peak_bytes"] < 0.5 * records[("none", 8)]["peak_bytes"], truncated
