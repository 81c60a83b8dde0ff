#!/usr/bin/env bash
# Runs a multi-process JAX job on this machine: P processes, each with D simulated CPU devices,
# a coordinator on 127.0.0.1 at a free port, gloo collectives between the processes.
#
# Usage (from the repository root):
#   launch/local.sh --processes=P --devices_per_process=D -- COMMAND [ARGS...]
# Example (2 processes x 4 devices = the 8-device mesh of one process with 8):
#   launch/local.sh --processes=2 --devices_per_process=4 -- \
#       python -m sleep_jax.main --config=configs/rule110.py:tiny --workdir=runs/r110_2proc
#
# Each process runs launch/process.sh COMMAND (the entry point tpu_pod.sh and slurm_gpu.sbatch
# use too). Output lines are prefixed with the process id. Killing the launcher (any signal)
# stops every process; if one fails, the others are stopped, its last lines are shown again and
# the launcher exits with its status. Python: $PYTHON, else python3 (needs no package beyond
# the standard library; the processes run COMMAND as given).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec "${PYTHON:-python3}" "$ROOT/launch/local.py" "$@"
