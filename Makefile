# anomalyforge — every target prints where its output went.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
MODELS  ?= .cache/models
RUN_DIR ?= runs/demo
EVAL_CONFIG ?= configs/eval.yaml
EVAL_DIR ?= runs/eval
# Prefect keeps its local database and settings inside the project, never in ~/.prefect
export PREFECT_HOME := $(CURDIR)/.cache/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export U2NET_HOME := $(CURDIR)/$(MODELS)

.PHONY: install lint test test-fast demo eval bench bench-synth bench-metrics clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from the local CPU wheel: nothing later may pull a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/anomalyforge fetch-weights --model-home $(MODELS)
	@echo "installed into $(VENV); rembg weights in $(MODELS)"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n 2 -q

test-fast:
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

demo:
	$(BIN)/anomalyforge synth --config configs/demo.yaml --run-dir $(RUN_DIR)
	$(BIN)/anomalyforge validate $(RUN_DIR)/shards
	@echo "demo outputs: $(RUN_DIR)/shards (WebDataset + parquet manifest), $(RUN_DIR)/report.md, $(RUN_DIR)/composites.png"

eval:
	$(BIN)/anomalyforge eval --config $(EVAL_CONFIG) --out-dir $(EVAL_DIR)

bench: bench-synth bench-metrics

bench-synth:
	$(BIN)/python bench/synth_throughput.py

bench-metrics:
	$(BIN)/python bench/metrics_throughput.py

clean:
	rm -rf runs .pytest_cache
