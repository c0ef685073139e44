# fluxir: the commands a new user needs are `make demo` and `make test` (both create .venv first); CI runs `make test-all`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export KEDRO_DISABLE_TELEMETRY := true

.PHONY: setup demo lint test test-all mlflow viz docs app

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	scripts/setup.sh
	touch $@

setup: $(VENV)/.installed  ## create .venv and install fluxir with its test tools

demo: setup  ## run the default pipeline on the embedded tiny random-weight models
	$(PY) -m fluxir.models.tiny --kind realesrgan --out data/01_raw/tiny/realesrgan/RealESRGAN_x4plus.pth
	$(PY) -m fluxir.models.tiny --kind flux_controlnet --out data/01_raw/tiny/flux_controlnet
	$(PY) -m fluxir.evaluation.demo --env tiny
	$(VENV)/bin/kedro run --env=tiny

LINTED := src tests benchmarks scripts docs/img
lint: setup  ## ruff: the rules and line length of pyproject.toml, and the code formatted as ruff format writes it
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=25
test: lint  ## lint + the fast tier (about 5 min on 2 cores): every test whose subject is not a process of its own
	$(PYTEST) -m "not slow and not e2e"

test-all: lint  ## lint + both tiers (what CI runs): adds kill/signal/multi-process/browser/base end-to-end tests
	$(PYTEST) -m "not slow"

mlflow: setup  ## MLflow UI on the project's SQLite store
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

app: setup  ## restoration web app on http://127.0.0.1:7860 (APP_ARGS="--env tiny" for the tiny models)
	$(PY) -m fluxir.app $(APP_ARGS)

viz: setup  ## kedro-viz on http://127.0.0.1:4141
	$(VENV)/bin/kedro viz run --env=tiny

docs: setup  ## documentation site on http://127.0.0.1:8000
	$(VENV)/bin/mkdocs serve
