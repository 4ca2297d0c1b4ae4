#!/usr/bin/env bash
# One job of `make cloud` (stages/cloud.py): one dvc.yaml stage on this machine, its inputs restored from the DVC
# remote's run-cache, the stage run in its image, its outputs and run-cache entry pushed. Usage, from the
# repository root (SkyPilot's workdir, the launching checkout):
#   STAGE=unlearn@npo-10-42 PROFILE=paper REGISTRY=ghcr.io/your-org bash docker/cloud/run-stage.sh "$STAGE"
# Needs docker (with the NVIDIA container toolkit for GPUs) and python3. Credentials come from the environment only:
# HF_TOKEN for gated models, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an AWS profile) for an S3 remote.
set -euo pipefail
STAGE=${1:?usage: run-stage.sh <dvc stage name, e.g. finetune-oracle@42 or unlearn@npo-10-42>}
cd "$(dirname "$0")/../.."

# The orchestrator only (dvc and the `unforgotten` entry point, whose runner starts the stage's image; no torch),
# in a venv outside the synced workdir, built once per machine: the jobs of one cluster share it (under a lock).
VENV=${UNFORGOTTEN_HOST_VENV:-$HOME/.unforgotten-host}
(
  flock 9
  if [ ! -x "$VENV/bin/dvc" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'dvc[s3]>=3.50' click pyyaml networkx
  fi
  "$VENV/bin/pip" install -q --no-deps --force-reinstall .
) 9>"$VENV.lock"
export PATH="$VENV/bin:$PATH"

if [ -n "${DVC_REMOTE_URL:-}" ]; then
  dvc remote add --local --default --force cloud "$DVC_REMOTE_URL"
  if [ -n "${DVC_REMOTE_ENDPOINT:-}" ]; then dvc remote modify --local cloud endpointurl "$DVC_REMOTE_ENDPOINT"; fi
fi

export UNFORGOTTEN_RUNNER=${UNFORGOTTEN_RUNNER:-docker}   # GPUs: this job's CUDA_VISIBLE_DEVICES (SkyPilot's)
if [ -n "${REGISTRY:-}" ]; then export UNFORGOTTEN_IMAGE="$REGISTRY/unforgotten-{stage}:{version}"; fi

exec python -m stages.cloud job "$STAGE" ${PROFILE:+--profile "$PROFILE"}
