# fluxir: the commands a new user needs are `make demo` (fluxir alone) and `make test` (with test tools); CI runs
# `make test-all`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export KEDRO_DISABLE_TELEMETRY := true
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup demo lint test test-all mlflow viz docs app

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	scripts/setup.sh
	touch $@ $(VENV)/.installed-demo

# The demo's own install: fluxir without test tools or Chromium (a full .installed serves it too).
$(VENV)/.installed-demo: pyproject.toml scripts/setup.sh
	if [ -f $(VENV)/.installed ] && [ $(VENV)/.installed -nt pyproject.toml ] && [ $(VENV)/.installed -nt scripts/setup.sh ]; \
	then touch $@; else scripts/setup.sh --no-test-extras && touch $@; fi

setup: $(VENV)/.installed  ## create .venv and install fluxir with its test tools and Chromium (browser tests)

# The restore example on the demo's own photos: the tiny adapter that `kedro run --env=tiny` trained.
RESTORE_EXAMPLE := $(VENV)/bin/kedro run --env=tiny --pipelines=restore --params=restore.input_dir=data/01_raw/benchmarks_demo/RealLQ250

demo: $(VENV)/.installed-demo  ## fluxgen -> train -> evaluate -> restore on the tiny random-weight models (no GPU, no test tools)
	$(PY) scripts/tiny_models.py --kind realesrgan --out data/01_raw/tiny/realesrgan/RealESRGAN_x4plus.pth
	$(PY) scripts/tiny_models.py --kind flux_controlnet --out data/01_raw/tiny/flux_controlnet
	$(PY) scripts/demo_data.py --env tiny
	$(VENV)/bin/kedro run --env=tiny
	$(RESTORE_EXAMPLE)
	$(VENV)/bin/kedro outputs --env tiny

LINTED := src tests benchmarks scripts docs/img
lint: setup  ## ruff: the rules and line length of pyproject.toml, and the code formatted as ruff format writes it
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=25
test: lint  ## lint + the fast tier (about 5 min on 2 cores): every test whose subject is not a process of its own
	$(PYTEST) -m "not slow and not e2e"

test-all: lint  ## lint + both tiers (what CI runs): adds kill/signal/multi-process/browser/base end-to-end tests
	$(PYTEST) -m "not slow"

mlflow: $(VENV)/.installed-demo  ## MLflow UI on the project's SQLite store; prints each experiment's runs-table address
	$(VENV)/bin/kedro mlflow-ui --store mlflow.db --host 127.0.0.1 --port 5000

app: setup  ## restoration web app on http://127.0.0.1:7860 (APP_ARGS="--env tiny" for the tiny models)
	$(PY) -m fluxir.app $(APP_ARGS)

viz: setup  ## kedro-viz on http://127.0.0.1:4141
	$(VENV)/bin/kedro viz run --env=tiny

docs: setup  ## documentation site on http://127.0.0.1:8000
	$(VENV)/bin/mkdocs serve
