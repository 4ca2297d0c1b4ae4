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

# The jobs of one cluster share SkyPilot's workdir, which each new job re-syncs: every job works in a copy of its
# own, with a DVC cache per machine that its jobs share.
JOB_DIR=$HOME/unforgotten-jobs/${SKYPILOT_TASK_ID:-$$}
mkdir -p "$JOB_DIR"
cp -a . "$JOB_DIR/"
cd "$JOB_DIR"

# The orchestrator only (dvc; no torch), in a venv outside the workdir, built once per machine under a lock. The
# `unforgotten` entry point runs this copy's code (nothing is installed that another job could be importing).
VENV=${UNFORGOTTEN_HOST_VENV:-$HOME/.unforgotten-host}
(
  flock 9
  if [ ! -x "$VENV/bin/dvc" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'dvc[s3]>=3.50' click pyyaml networkx
  fi
) 9>"$VENV.lock"
mkdir -p .job-bin
printf '#!/bin/sh\nexec "%s/bin/python" -c "import sys; from stages.runner import main; sys.exit(main())" "$@"\n' \
  "$VENV" > .job-bin/unforgotten
chmod +x .job-bin/unforgotten
export PATH="$JOB_DIR/.job-bin:$VENV/bin:$PATH" PYTHONPATH="$JOB_DIR"
dvc config --local cache.dir "$HOME/unforgotten-dvc-cache"

if [ -n "${DVC_REMOTE_URL:-}" ]; then
  dvc remote add --local --default --force cloud "$DVC_REMOTE_URL"
  if [ -n "${DVC_REMOTE_ENDPOINT:-}" ]; then dvc remote modify --local cloud endpointurl "$DVC_REMOTE_ENDPOINT"; fi
fi

export UNFORGOTTEN_RUNNER=${UNFORGOTTEN_RUNNER:-docker}   # GPUs: this job's CUDA_VISIBLE_DEVICES (SkyPilot's)
if [ -n "${REGISTRY:-}" ]; then export UNFORGOTTEN_IMAGE="$REGISTRY/unforgotten-{stage}:{version}"; fi

exec "$VENV/bin/python" -m stages.cloud job "$STAGE" ${PROFILE:+--profile "$PROFILE"}
