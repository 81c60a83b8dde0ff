#!/usr/bin/env bash
# One-shot GPU check of the Pallas gated delta rule (issue 6): correctness, then timing.
#
# Run from the repository root on a machine with one NVIDIA GPU and jax[cuda]:
#     bash sleep_jax/bench/gpu_check.sh            # results also under $OUT (default /tmp/gdr_gpu)
# flash-linear-attention is timed too when torch, triton and fla import. fla is pure Python: bring
# it as wheels in .whl/ (see shared/notes/measuring-against-fla.md):
#     python3 -m pip download --no-deps -d .whl fla-core==0.6.0 flash-linear-attention==0.6.0
# and this script installs them with --target (needs torch + triton already on the machine).
#
# Steps, each a JSON-lines file under $OUT (stops at the first failure):
#   1. small odd shapes (T not a multiple of 64, K != V, K, V not powers of two): pallas vs float32
#      chunked, float32 with chunk 32 (tol 1e-4) and bf16 with chunk 64 (tol 1e-2): catches Triton compile errors quickly.
#   2. the anchor shapes (bf16, H=16, K=V=128; B=8 T=4096 and B=1 T=32768): pallas vs float32
#      chunked, relative RMS <= 1e-2 on o, final state and the gradients of q, k, v, g, beta.
#   3. timing at the anchor shapes: chunked, pallas, fla; forward and forward+backward medians.
# Report the card name (the "device" field) with every number.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gdr_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gdr_site .whl/*.whl
  export PYTHONPATH="/tmp/gdr_site:${PYTHONPATH:-}"
fi
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee "$OUT/devices.txt"

bench="python3 -m sleep_jax.bench.delta_rule"
$bench --check --dtype=float32 --check_tol=1e-4 --chunk_size=32 --shapes=2x200 --heads=3 --head_dim_k=48 \
  --head_dim_v=80 | tee "$OUT/check_small_f32.jsonl"
$bench --check --dtype=bfloat16 --shapes=2x200 --heads=3 --head_dim_k=48 --head_dim_v=80 \
  | tee "$OUT/check_small_bf16.jsonl"
$bench --check --shapes=8x4096,1x32768 | tee "$OUT/check_anchor.jsonl"
$bench --shapes=8x4096,1x32768 --impls=chunked,pallas,fla | tee "$OUT/bench_anchor.jsonl"
