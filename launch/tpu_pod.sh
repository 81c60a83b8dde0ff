#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: runs sleep_jax.main on every worker with --multihost.
#
# Usage:
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra main flags...]
# Example:
#   launch/tpu_pod.sh my-v5p-64 us-east5-a configs/rule110.py:paper /mnt/shared/runs/r110_n4 \
#       --config.sleep.passes=4 --config.mesh.data=-1 --config.mesh.fsdp=4
#
# Assumes:
#   - the TPU VM slice exists (gcloud compute tpus tpu-vm create ...) and `gcloud` is set to
#     the right project;
#   - every worker has this repository at $REPO_DIR (default ~/sleep_jax) with its dependencies
#     installed (pip install -r requirements.txt && pip install --no-deps -e .: the lock holds
#     libtpu); set
#     SETUP=1 to clone/update and install first (needs REPO_URL);
#   - WORKDIR is a directory every worker sees at the same path (Filestore/NFS or a gcsfuse
#     mount): checkpoints are written by all workers, metrics and eval.json by worker 0.
# jax.distributed.initialize() finds the coordinator and the worker ids from the TPU metadata.
set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_DIR=${REPO_DIR:-'~/sleep_jax'}

# Quote the extra flags so they survive the remote shell.
EXTRA=""
for arg in "$@"; do EXTRA+=" $(printf '%q' "$arg")"; done

SETUP_CMD=""
if [[ "${SETUP:-0}" == "1" ]]; then
  : "${REPO_URL:?SETUP=1 needs REPO_URL}"
  SETUP_CMD="( [ -d ${REPO_DIR} ] || git clone ${REPO_URL} ${REPO_DIR} ) && cd ${REPO_DIR} && git pull --ff-only && pip install -q -r requirements.txt && pip install -q --no-deps -e . && "
fi

# Every worker runs launch/process.sh, the entry point of every launcher (environment, then
# --multihost by default); jax.distributed.initialize() reads the TPU metadata.
RUN_CMD="cd ${REPO_DIR} && launch/process.sh python -m sleep_jax.main --config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR")${EXTRA}"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="${SETUP_CMD}${RUN_CMD} 2>&1 | tee -a /tmp/sleep_jax_\$(hostname).log"
