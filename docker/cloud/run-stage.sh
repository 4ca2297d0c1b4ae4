#!/usr/bin/env bash
# Runs one dvc.yaml stage in its image on this machine (a cloud GPU instance): pull the stage's inputs from the DVC
# remote, run it through the stage runner, push its outputs. Usage, from the repository root:
#   REGISTRY=ghcr.io/your-org bash docker/cloud/run-stage.sh finetune-oracle
# Needs docker (with the NVIDIA container toolkit for GPUs) and python3. Credentials come from the environment only:
# HF_TOKEN for gated models, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an AWS profile) for an S3 remote.
set -euo pipefail
STAGE=${1:?usage: run-stage.sh <dvc stage name, e.g. finetune-oracle or unlearn@npo-10>}
cd "$(dirname "$0")/../.."

# The orchestrator only: dvc and the `unforgotten` entry point, whose runner starts the stage's image; no torch here.
python3 -m venv .venv-host
.venv-host/bin/pip install -q 'dvc[s3]>=3.50' click
.venv-host/bin/pip install -q --no-deps .
export PATH="$PWD/.venv-host/bin:$PATH"

if [ -n "${DVC_REMOTE_URL:-}" ]; then
  dvc remote add --local --default --force cloud "$DVC_REMOTE_URL"
  if [ -n "${DVC_REMOTE_ENDPOINT:-}" ]; then dvc remote modify --local cloud endpointurl "$DVC_REMOTE_ENDPOINT"; fi
fi

export UNFORGOTTEN_RUNNER=${UNFORGOTTEN_RUNNER:-docker}
if [ -n "${REGISTRY:-}" ]; then export UNFORGOTTEN_IMAGE="$REGISTRY/unforgotten-{stage}:{version}"; fi

dvc pull --with-deps "$STAGE"      # the stage's inputs (and its outputs, if someone already pushed them)
dvc repro --single-item "$STAGE"   # runs only if its inputs, code or params changed
dvc push "$STAGE"
git --no-pager diff --stat -- dvc.lock
echo "done: commit dvc.lock from this machine, or copy it back (e.g. sky rsync-down), to record the run"
