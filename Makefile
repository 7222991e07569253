# The two commands of the README: `make run` and `make test`. Both create the venv and install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 2
CONFIG ?= config/config.yaml
SNAKEMAKE := $(VENV)/bin/snakemake
PORT ?= 5000
HOST ?= 127.0.0.1
REPORT ?= results/report.html
TARGETS ?=

.PHONY: install run test lint dry-run report dashboard clean-results

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# Running `make run` again after a kill or a crash resumes: the first line removes the lock a killed
# Snakemake left (never one a live Snakemake holds), --rerun-incomplete redoes half-written outputs.
# TARGETS: optional files or rules to build instead of the default target `all`.
run: $(STAMP)
	$(PY) scripts/unlock_stale.py --configfile $(CONFIG)
	$(SNAKEMAKE) --cores $(CORES) --configfile $(CONFIG) --rerun-incomplete --printshellcmds $(TARGETS)

dry-run: $(STAMP)
	$(SNAKEMAKE) -n --cores $(CORES) --configfile $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q

# Snakemake's linter on the default workflow and on a sweep (which adds rule compare_sweep); fails on any lint.
LINT_CONFIGS ?= config/config.yaml config/seeds.yaml
lint: $(STAMP)
	@for cfg in $(LINT_CONFIGS); do \
	  out=$$($(SNAKEMAKE) --lint --configfile $$cfg 2>&1); rc=$$?; \
	  if [ $$rc -ne 0 ] || ! grep -q "Congratulations" <<<"$$out"; then echo "$$out"; echo "lint failed: $$cfg"; exit 1; fi; \
	  echo "lint clean: $$cfg"; \
	done

# HTML report of a finished run (figures + captions from workflow/report/*.rst); needs pygments (installed).
report: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile $(CONFIG) --report $(REPORT)

dashboard: $(STAMP)
	$(PY) -m dko.dashboard --config $(CONFIG) --port $(PORT) --host $(HOST)
