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

.PHONY: install run test dry-run report dashboard clean-results

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile $(CONFIG) --rerun-incomplete --printshellcmds

dry-run: $(STAMP)
	$(SNAKEMAKE) -n --cores $(CORES) --configfile $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q

# HTML report of a finished run (figures + captions from workflow/report/*.rst); needs pygments (installed).
report: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile $(CONFIG) --report $(REPORT)

dashboard: $(STAMP)
	$(PY) -m dko.dashboard --config $(CONFIG) --port $(PORT) --host $(HOST)
