# The two commands that always work on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PY        := $(VENV)/bin/python
UV_PIN    := 0.13.9
UV        := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
ARTIFACTS := $(CURDIR)/artifacts

export AIRFLOW_HOME                 ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER   := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PYSPARK_PYTHON               := $(CURDIR)/$(PY)
export SPARK_LOCAL_IP               := 127.0.0.1
# Every stage, Spark Python worker and test is a fresh interpreter: where the shell sets PYTHONDONTWRITEBYTECODE each
# one compiles jax, pandas, pyarrow... from source again (~3 CPU-s a Spark worker). Writing .pyc lazily compiles only
# the ~3,400 modules the pipeline imports, once (~6 CPU-s), where `uv sync --compile-bytecode` compiled all ~26,000
# (48 s on 2 cores).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help env run test test-fast test-services airflow clean

help:
	@echo "make run      the whole pipeline on the tiny profile through Airflow; artifacts under ./artifacts"
	@echo "make test     the whole test suite"
	@echo "make test-services  tests against real services: Spark standalone, Airflow (REST API, UI in headless Chromium, PostgreSQL), GCS emulator, a stage in the pipeline image (podman)"
	@echo "make airflow  Airflow standalone on localhost:8080 with the DAGs loaded"

.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install -q uv==$(UV_PIN)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra tpu --reinstall-package fasttext-numpy2-wheel  # heals venvs where fasttext-predict overwrote it; tpu: libtpu for `xgen train compile`
	$(PY) -m xgen_core.data.spark_cds  # class archive for fast local Spark drivers (once per environment)
	@touch $@

env: $(VENV)/.synced

$(AIRFLOW_HOME)/airflow.db: | env
	@mkdir -p $(AIRFLOW_HOME)
	$(VENV)/bin/airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (tail -20 $(AIRFLOW_HOME)/migrate.log; exit 1)

run: env $(AIRFLOW_HOME)/airflow.db
	@mkdir -p $(AIRFLOW_HOME)/logs
	@echo "running DAG xgen_end_to_end (profile tiny); Airflow log: $(AIRFLOW_HOME)/logs/make-run.log"
	@set -o pipefail; $(PY) infra/local/run_dag.py xgen_end_to_end --conf '{"profile": "tiny", "root": "$(ARTIFACTS)"}' \
		2>&1 | tee $(AIRFLOW_HOME)/logs/make-run.log | grep --line-buffered -E "\[DAG TEST\] end task|xgen_end_to_end: run|error:"
	@run=$$(ls -td $(ARTIFACTS)/runs/*/ | head -1); echo "artifacts: $(ARTIFACTS)"; echo "report:    $${run}report.md"; \
		sed -n '/^#### Curriculum stages/,/^!\[/p' $${run}report.md | grep -v '^!\[' || true; \
		awk '/^### Eval: /{p=1} p&&/^$$/&&t{p=t=0; print ""} p{print; if (/^\|/) t=1}' $${run}report.md  # mixture summary, eval tables

test: env
	$(PY) -m pytest -q --ignore=tests/services

test-fast: env
	$(PY) -m pytest -q -m "not spark and not airflow"

# Starts its services on 127.0.0.1 and stops them; a service that cannot start here is skipped with the reason.
test-services: env
	$(PY) -m pytest -q -rs tests/services

airflow: env $(AIRFLOW_HOME)/airflow.db
	@echo "Airflow on http://localhost:8080 ; login printed below (also in $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated)"
	@( sleep 25; echo; echo "login: $$(cat $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated 2>/dev/null)"; echo ) &
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH AIRFLOW__API__HOST=127.0.0.1 $(VENV)/bin/airflow standalone

clean:
	rm -rf $(ARTIFACTS) $(AIRFLOW_HOME)
