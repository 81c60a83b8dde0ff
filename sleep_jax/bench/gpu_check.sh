#!/usr/bin/env bash
# One-shot GPU check of the Pallas gated delta rule (issue 6): correctness, timing, then tuning data.
#
# Run from the repository root on a machine with one NVIDIA GPU and jax[cuda]:
#     bash sleep_jax/bench/gpu_check.sh            # results also under $OUT (default /tmp/gdr_gpu)
# flash-linear-attention is timed too when torch, triton and fla import. fla is pure Python: bring
# it as wheels in .whl/ (see shared/notes/measuring-against-fla.md):
#     python3 -m pip download --no-deps -d .whl fla-core==0.6.0 flash-linear-attention==0.6.0
# and this script installs them with --target (needs torch + triton already on the machine).
#
# Steps, each a JSON-lines file under $OUT, most important first (a device call that runs out of
# time still returns what is there). A failing step is recorded in $OUT/status.txt and the next
# step runs anyway (timings are worth having even when a check fails; a compile error shows as a
# row with "error"). Exit status: 1 if any step failed.
#   1. small odd shapes (T not a multiple of 64, K != V, K, V not powers of two): pallas vs float32
#      chunked, float32 with chunk 32 (tol 1e-4) and bf16 with chunk 64 (tol 1e-2).
#   2. the anchor shapes (bf16, H=16, K=V=128; B=8 T=4096 and B=1 T=32768): pallas vs float32
#      chunked, relative RMS <= 1e-2 on o, final state and the gradients of q, k, v, g, beta.
#   3. timing at the anchor shapes: chunked, pallas, fla; forward and forward+backward medians,
#      and each Pallas kernel alone (--per_kernel).
#   4. block-size sweep at B=8 T=4096 (pallas only, one row per --sizes set): the data for
#      sleep_jax/ops/delta_rule/pallas/block_sizes.py.
# Report the card name (the "device" field) with every number.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gdr_gpu}
mkdir -p "$OUT"
: > "$OUT/status.txt"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gdr_site .whl/*.whl
  export PYTHONPATH="/tmp/gdr_site:${PYTHONPATH:-}"
fi
python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" \
  | tee "$OUT/devices.txt"
python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)" \
  >> "$OUT/devices.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$OUT/devices.txt" 2>&1

failed=0
step() {  # step NAME ARGS...: one bench run, its rows in $OUT/NAME.jsonl, its status in status.txt
  local name=$1; shift
  local start=$SECONDS
  python3 -m sleep_jax.bench.delta_rule "$@" 2> "$OUT/$name.log" | tee "$OUT/$name.jsonl"
  local rc=${PIPESTATUS[0]}
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/status.txt"
  [ "$rc" -eq 0 ] || { failed=1; tail -n 5 "$OUT/$name.log"; }
}

small="--shapes=2x200 --heads=3 --head_dim_k=48 --head_dim_v=80"
step check_small_f32 --check --dtype=float32 --check_tol=1e-4 --chunk_size=32 $small
step check_small_bf16 --check --dtype=bfloat16 $small
step check_anchor --check --shapes=8x4096,1x32768
step bench_anchor --shapes=8x4096,1x32768 --impls=chunked,pallas,fla --per_kernel
step sweep_8x4096 --shapes=8x4096 --impls= --iters=10 \
  --sizes=block_v=32 --sizes=block_v=128 --sizes=num_warps=8 --sizes=block_v=128,num_warps=8 \
  --sizes=num_stages=1 --sizes=num_stages=3 --sizes=bf16_inverse_precision=highest
exit $failed
