#!/usr/bin/env bash
# One process of a multi-process run: the entry point of every launcher (local.sh for processes
# on this machine, tpu_pod.sh on each TPU worker, slurm_gpu.sbatch in each SLURM task).
#
# Usage: launch/process.sh COMMAND [ARGS...]    e.g. launch/process.sh python -m sleep_jax.main ...
#
# Sets up the environment every process shares, then execs COMMAND:
#   - activates $VENV if set (a virtual environment with the repository's dependencies);
#   - SLEEP_JAX_MULTIHOST=1: the main job joins the multi-process runtime (--multihost by default);
#   - PYTHONUNBUFFERED=1: output lines reach the launcher's log as they are written.
# The coordinator and this process's id come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
# JAX_PROCESS_ID where the launcher sets them (local.sh), else from the TPU metadata or SLURM_*.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi
if [[ -n "${VENV:-}" ]]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
export SLEEP_JAX_MULTIHOST=1
export PYTHONUNBUFFERED=1
exec "$@"
