# layerserve: `make serve` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
HOST   ?= 127.0.0.1
PORT   ?= 8001
HTTP_PORT ?= 8000
METRICS_PORT ?= 8002
DEVICE ?= cpu
MODELS ?= models

# Each stamp records one set of extras installed from this pyproject; a changed
# pyproject.toml makes it stale, so setup re-runs only when needed.
STAMP_SERVE := $(VENV)/.stamp-serve
STAMP_DEV   := $(VENV)/.stamp-dev
STAMP_GPU   := $(VENV)/.stamp-gpu
# KServe's ModelServer, the peer the benchmarks and one load test compare against, in its own venv.
STAMP_KSERVE := bench/.venv-kserve/.kserve-0.21.0

.PHONY: help setup setup-dev setup-gpu serve test lint proto models bench load gpu-check clean

help:
	@echo "make serve   serve the default model repository on $(HOST):$(PORT) (gRPC), :$(HTTP_PORT) (HTTP/REST), metrics on :$(METRICS_PORT)"
	@echo "make test    lint and run every test"
	@echo "make models  retrain, re-export and re-split the built-in models (needs torch)"
	@echo "make bench   run the benchmark suite; results go to docs/"
	@echo "make load    Locust load test against the served endpoints"
	@echo "make proto   regenerate the Python stubs from proto/"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Serving only: no torch.
$(STAMP_SERVE): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	@touch $@

# Everything the tests, export and benchmarks need (torch pinned to the CPU build on disk).
$(STAMP_DEV): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[export,client,load,dev]'
	@touch $@ $(STAMP_SERVE)

$(STAMP_KSERVE): | $(STAMP_DEV)
	$(PY) -c "from bench.peers.kserve_peer import ensure_venv; ensure_venv()"

setup: $(STAMP_SERVE)
setup-dev: $(STAMP_DEV)

# onnxruntime and onnxruntime-gpu own the same module: remove the CPU wheel, then (re)install the
# GPU one over what is left. Any later re-install of the base package brings the CPU wheel back,
# so this stamp depends on the serve stamp and re-runs after it.
$(STAMP_GPU): $(STAMP_SERVE)
	$(PIP) uninstall -q -y onnxruntime onnxruntime-gpu
	$(PIP) install -q 'onnxruntime-gpu>=1.20'
	$(PY) -c "import onnxruntime as o; o.preload_dlls(); print(o.get_available_providers())"
	@touch $@

setup-gpu: $(STAMP_GPU)

serve: $(STAMP_SERVE)
	$(VENV)/bin/layerserve serve --models $(MODELS) --host $(HOST) --port $(PORT) --http-port $(HTTP_PORT) \
		--metrics-port $(METRICS_PORT) --device $(DEVICE)

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check .

test: $(STAMP_DEV) $(STAMP_KSERVE) lint
	$(PY) -m pytest $(PYTEST_ARGS)

proto: $(STAMP_DEV)
	$(PY) -m layerserve.proto.generate

models: $(STAMP_DEV)
	$(VENV)/bin/layerserve train digits_cnn --out $(MODELS)
	$(VENV)/bin/layerserve train digits_resnet --out $(MODELS)

bench: $(STAMP_DEV) $(STAMP_KSERVE)
	$(PY) -m bench.run $(BENCH_ARGS)

load: $(STAMP_DEV)
	$(PY) -m bench.load $(LOAD_ARGS)

gpu-check: $(STAMP_GPU)
	$(PY) -m bench.gpu_check $(GPU_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
