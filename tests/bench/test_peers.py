"""The peer benchmark on a tiny model: its rows parse, both sides agree, every ratio is positive;
a tolerance nothing meets stops it before timing, exit status 1. Needs torch and transformers."""
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from sleep_jax.bench import peers  # noqa: E402

TINY = peers.PeerModel(hidden=32, layers=2, attention_every=2, mlp=48, vocab=64, gdn_key_heads=2,
                       gdn_value_heads=4, gdn_head_dim=8, attention_heads=2, attention_kv_heads=1,
                       attention_head_dim=8)
# One shape for the forward and the prompt (the prefill row's own forward reuses its compile), one
# decode batch (the prefill reuses its engine): compiling is most of this test's time.
SETTINGS = dict(repeats=1, forward_shapes=("1x8",), prompt=8, new_tokens=4, decode_batches=(1,),
                train_shape="2x8", window=13)


def rows_of(capsys, **settings):
    status = peers.run(TINY, **{**SETTINGS, **settings})
    return status, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_rows_agree_and_ratios_are_positive(capsys):
    status, rows = rows_of(capsys)
    assert status == 0
    assert [r["what"] for r in rows] == ["header", "agreement", "forward", "decode", "prefill", "train"]
    header, check = rows[:2]
    assert header["parameters"] > 0 and header["model"]["vocab"] == 64 and header["torch_threads"] >= 1
    assert check["ok"] and check["max_rel_err"] < 1e-5
    for r in rows[2:]:
        assert r["ratio_min"] > 0 and r["ratio_median"] > 0 and r["ours_ms"]["min"] > 0, r
        assert r.get("ok", True), r
    decode, prefill = rows[3], rows[4]
    assert decode["tokens_identical"] and decode["sleeps"] == 0 and decode["batch"] == 1
    assert prefill["prefill_over_forward_min"] > 0 and prefill["sleeps"] == 0


def test_disagreement_stops_before_timing(capsys):
    status, rows = rows_of(capsys, tolerance=0.0)
    assert status == 1
    assert [r["what"] for r in rows] == ["header", "agreement"] and not rows[-1]["ok"]


def test_a_window_the_engine_would_sleep_in_is_refused():
    with pytest.raises(ValueError, match=r"^--window=12 must be > --prompt \+ --new_tokens = 12"):
        peers.run(TINY, **{**SETTINGS, "window": 12})
