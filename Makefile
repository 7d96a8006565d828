# Every target bootstraps .venv when it is missing; a second run does not reinstall.
# The install: uv (from PyPI, into the venv) installs requirements.lock, every package pinned with its
# hashes, then this project (editable). INSTALLER=pip does the same with pip (slower: minutes, not seconds).
# GPU users: `make GPU=1 <target>` adds TensorFlow's CUDA extra (tensorflow[and-cuda]).
PYTHON ?= python3
INSTALLER ?= uv
UV_VERSION := 0.13.8
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed$(if $(GPU),-gpu)
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
# uv compiles the packages' bytecode as pip does (uv leaves it to the first import by default): without it
# a fresh clone's `make test` took 8 min 48 s instead of 5 min 45 s, for 25 s more of install.
INSTALL := $(if $(filter pip,$(INSTALLER)),$(PIP) install,$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python)
# Stages run as `python -m op_classifier.<stage>` under DVC: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: help install run lint test test-slow sample ui exps serve tracking-server tracking-server-stop bench lock clean

help:
	@echo "make run        the whole pipeline on the built-in sample (dvc repro)"
	@echo "make test       ruff, then the fast tests;  make test-slow: all of them;  make lint: ruff only"
	@echo "make sample     (re)generate the built-in sample in data/raw"
	@echo "make ui         the MLflow UI over this project's runs, on http://127.0.0.1:5000"
	@echo "make exps       dvc exp show, the headline only: val/test accuracy and the params that differ"
	@echo "make serve      the champion model over REST on http://127.0.0.1:8501 (/invocations, /v1/models/op-classifier:predict; PORT=, MODEL=)"
	@echo "make tracking-server       a team MLflow server on PostgreSQL, http://127.0.0.1:5001 (PORT=, HOST=, ALLOWED_HOSTS=, AUTH=1); make tracking-server-stop"
	@echo "make bench      the pipeline benchmark: stage times and accuracy in a fresh copy"

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(if $(filter pip,$(INSTALLER)),,$(PIP) install uv==$(UV_VERSION))
	$(INSTALL) --require-hashes -r requirements.lock
	$(INSTALL) --no-deps -e .
	$(if $(GPU),$(PIP) install -e '.[gpu]')
	touch $@

run: $(STAMP)
	@test -d data/raw || $(BIN)/op-classifier sample --out data/raw
	$(BIN)/dvc repro

sample: $(STAMP)
	$(BIN)/op-classifier sample --out data/raw

# Prints the link to the runs table with the columns that matter, then runs MLflow's UI.
ui: $(STAMP)
	$(BIN)/op-classifier ui$(if $(PORT), --port $(PORT))

# Each DVC experiment's headline: val and test accuracy and the params that differ. Dropped: every class's
# scores, the audit's counts, the scenes' and promotion's details, and each dependency's hash.
EXPS_DROP := .*per_class\.|scenes\.|promotion\.|(audited|left_out_multi_label|out_of_sample_accuracy|label|outlier|near_duplicate|class_imbalance|near_duplicate_across_splits)$$|src/|conf/|data/|experiments/
exps: $(STAMP)
	$(BIN)/dvc exp show --only-changed --drop '$(EXPS_DROP)'

# The registered champion over REST (op-classifier serve); TensorFlow Serving's {"instances": ...} body.
serve: $(STAMP)
	$(BIN)/op-classifier serve$(if $(PORT), --port $(PORT))$(if $(MODEL), --model $(MODEL))

# PostgreSQL (initdb on first use into .mlflow-server/) and `mlflow server` on it, proxying artifacts;
# prints the MLFLOW_TRACKING_URI to export. MLflow's PostgreSQL driver is the `server` extra.
SERVER_STAMP := $(VENV)/.installed-server
$(SERVER_STAMP): $(STAMP)
	$(BIN)/python -c "import psycopg2"  # in requirements.lock (the test extra's): MLflow's PostgreSQL driver
	touch $@

tracking-server: $(SERVER_STAMP)
	$(BIN)/op-classifier tracking-server start$(if $(PORT), --port $(PORT))$(if $(HOST), --host $(HOST))$(if $(ALLOWED_HOSTS), --allowed-hosts $(ALLOWED_HOSTS))$(if $(AUTH), --app-name basic-auth)

tracking-server-stop: $(STAMP)
	$(BIN)/op-classifier tracking-server stop

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/reproducibility.py
	$(BIN)/python benchmarks/predict.py
	$(BIN)/python benchmarks/serve.py

# ruff (lint + format check) first: it takes a second, and a red house fails fast.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fast tests in TEST_WORKERS processes, a test file each at a time (its module fixtures made once);
# the slowest 15 printed, so that a change sees what it costs.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m '' -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# The tested versions (this venv's) with every file's hash, resolved from pyproject.toml's test extra.
lock: $(STAMP)
	test -x $(BIN)/uv || $(PIP) install uv==$(UV_VERSION)
	$(BIN)/uv pip freeze --python $(BIN)/python --exclude-editable > $(VENV)/tested.txt
	$(BIN)/uv pip compile --quiet pyproject.toml --extra test -c $(VENV)/tested.txt --generate-hashes \
	  --python-version 3.11 --custom-compile-command "make lock" -o requirements.lock

clean:
	rm -rf $(VENV) data/prepared experiments/tuning experiments/model experiments/plots experiments/metrics.json
