# Two entry points (README): `make repro` runs the pipeline, `make test` the tests.
# Both create the virtual environment first if it is missing or out of date.
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := true
export GX_ANALYTICS_ENABLED := false
export PYSPARK_PYTHON := $(BIN)/python

.PHONY: repro test bench env ablation ablation-collect review

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# lenscat's own dependencies (ligo.skymap, lalsuite) are not needed: we read its CSV only
	$(BIN)/python -m pip install --quiet --no-deps lenscat==1.1.3
	touch $@

repro: env
	dvc repro

test: env
	python -m pytest -n 2 --dist loadfile tests

bench: env
	python -m benchmarks.survey_throughput

ablation: env   # queue the leave-one-out variants of params.yaml `ablation:` as DVC experiments
	python -m darkhalo.eval.ablation

ablation-collect: env   # after `dvc queue start` finished: metrics/ablation.json for the report's ablation table
	python -m darkhalo.eval.ablation --collect
	dvc repro report

review: env   # the pull-request comment: reports/review.md against BASE (default main), as CI posts it
	python -m darkhalo.report.review --base $(or $(BASE),main)
