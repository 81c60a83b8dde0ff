"""The delta-rule benchmark at a tiny shape on CPU: one JSON line per impl, and the check mode."""
import json

import pytest
from absl import app, flags

from sleep_jax.bench import delta_rule
from sleep_jax.ops.delta_rule.pallas.block_sizes import parse_overrides


def run_main(capsys, *args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["delta_rule", "--shapes=1x20", "--heads=2", "--head_dim_k=16", "--head_dim_v=16",
                 "--chunk_size=16", "--warmup=0", "--iters=1", *args])
    delta_rule.main([])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_nominal_flops_of_one_chunk():
    # 2*C^2*(3K + 2V) + 6*C*K*V with C = 64, K = V = 1, two heads, T = 65 -> two chunks.
    assert delta_rule.nominal_flops(1, 65, 2, 1, 1, 64) == 2 * 2 * (2 * 64 * 64 * 5 + 6 * 64)


def test_timing_lines(capsys):
    rows = run_main(capsys, "--impls=pallas,fla")
    assert [r["impl"] for r in rows] == ["pallas", "fla"]
    assert rows[0]["fwd_ms"] > 0 and rows[0]["fwd_bwd_ms"] > 0 and rows[0]["fwd_tflops"] > 0
    assert rows[0]["interpret"] is True  # CPU: the kernels ran in the interpreter
    assert "skipped" in rows[1]  # no torch/fla/CUDA here


def test_check_mode_passes(capsys):
    [row] = run_main(capsys, "--check")
    assert row["passed"] is True
    assert set(row["rel_rms"]) == {"o", "final_state", "d_q", "d_k", "d_v", "d_g", "d_beta"}
    assert max(row["rel_rms"].values()) <= 1e-2


def test_sizes_rows_and_per_kernel_rows(capsys):
    rows = run_main(capsys, "--impls=pallas", "--sizes=block_v=8", "--per_kernel")
    timed = [r for r in rows if "kernel" not in r]
    assert [r.get("sizes") for r in timed] == [None, {"block_v": 8}]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in timed)
    kernels = ["wy_prep", "recurrence", "output", "reverse_recurrence", "chunk_gradients"]
    per_kernel = [r for r in rows if "kernel" in r]
    assert [r["kernel"] for r in per_kernel] == kernels * 2
    assert [r.get("sizes") for r in per_kernel] == [None] * 5 + [{"block_v": 8}] * 5
    assert all(r["ms"] > 0 for r in per_kernel)


def test_failing_configuration_is_a_row_and_the_run_goes_on(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(capsys, "--impls=pallas", "--sizes=recurrence=spiral", "--sizes=block_v=8")
    assert exit_info.value.code == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r.get("sizes") for r in rows] == [None, {"recurrence": "spiral"}, {"block_v": 8}]
    assert "recurrence" in rows[1]["error"] and "fwd_ms" in rows[2]


def test_sizes_flag_errors_name_the_key(capsys):
    with pytest.raises(app.UsageError, match="num_warps"):
        run_main(capsys, "--sizes=num_warps=8")  # a GPU-only key on the CPU
    with pytest.raises(ValueError, match="'block_v'"):
        parse_overrides("block_v")
    assert parse_overrides("block_v=32,layout=heads_first") == {"block_v": 32, "layout": "heads_first"}


def test_resources_mode_compiles_each_kernel_once_per_size_set(capsys):
    rows = run_main(capsys, "--resources", "--sizes=num_warps=8")  # a GPU key is fine here
    assert len(rows) == 10 and all("error" not in r for r in rows)
    assert [r.get("sizes") for r in rows] == [None] * 5 + [{"num_warps": 8}] * 5
    assert [r["num_warps"] for r in rows] == [4] * 5 + [8] * 5
    assert all(r["device"] == "sm_90 (compiled only)" and r["registers"] > 0 for r in rows)


# A stand-in for MaxText's `jax_chunk_gated_delta_rule` (same signature and layout): the recurrent
# form, optionally with its output scaled, so the loader, the agreement check and the ratios run
# without MaxText.
STAND_IN = '''
from sleep_jax.ops import gated_delta_rule


def jax_chunk_gated_delta_rule(query, key, value, g, beta, chunk_size=64, initial_state=None,
                               use_qk_norm_in_gdn=False):
    o, final_state = gated_delta_rule(query, key, value, g, beta, initial_state=initial_state,
                                      output_final_state=True, impl="recurrent")
    return o * {factor}, final_state
'''
TINY = dict(batch=1, steps=12, heads=1, head_dim=4, repeats=2)


def write_stand_in(tmp_path, factor=1.0):
    path = tmp_path / f"peer_{str(factor).replace('.', '_')}.py"
    path.write_text(STAND_IN.format(factor=factor))
    return str(path)


def test_op_ratios_refuses_a_peer_that_disagrees_or_is_missing(tmp_path):
    with pytest.raises(ValueError, match="disagrees"):
        delta_rule.op_ratios(write_stand_in(tmp_path, factor=1.01), **TINY)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match="jax_chunk_gated_delta_rule"):
        delta_rule.op_ratios(str(empty), **TINY)
    with pytest.raises(ValueError, match="not a file"):
        delta_rule.op_ratios(str(tmp_path / "absent.py"), **TINY)


def test_against_flag_prints_the_ratios_of_op_ratios(capsys, tmp_path):
    [row] = run_main(capsys, f"--against={write_stand_in(tmp_path)}", "--iters=2", "--shapes=1x12",
                     "--heads=1", "--head_dim_k=4", "--head_dim_v=4")
    assert row["against"].endswith(".py") and (row["B"], row["T"], row["K"]) == (1, 12, 4)
    assert row["max_rel_rms"] <= delta_rule.PEER_TOLERANCE
    for kind in ("fwd", "fwd_bwd"):
        for stat in ("min", "median"):
            ours, peer = row[f"{kind}_ms_{stat}"], row[f"peer_{kind}_ms_{stat}"]
            assert ours > 0 and peer > 0
            assert row[f"{kind}_ratio_{stat}"] == pytest.approx(ours / peer, rel=1e-2)
