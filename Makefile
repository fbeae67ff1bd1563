# The study's two entry points: `make repro` (set up, run the pipeline) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= default

# DVC on these machines has no internet: no analytics, no update checks, no Studio.
export DVC_NO_ANALYTICS := 1
export DVC_STUDIO_OFFLINE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test profile bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

repro: setup
	dvc repro
	@echo
	@echo "Results:"
	@echo "  design:              data/design.json"
	@echo "  phase C (simulated): data/phase_c/dose_<d>/patched_{train,test}.npz, overview.png"
	@echo "  phase D (overlap):   data/phase_d/dose_<d>/<view>/{train,test}.npz, metrics.json"
	@echo "  phase E (PINN):      data/phase_e/dose_<d>/<view>/gs<g>/wts.h5.zip"
	@echo "                       data/phase_e/runs/<d>-<view>/{training_manifest.json,eval_*.json,losses_*.csv}"
	@echo "  metrics:             dvc metrics show"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Switch profile: params.yaml becomes profiles/$(PROFILE).yaml; `dvc params diff` shows the change.
profile:
	@test -f profiles/$(PROFILE).yaml || { echo "no profile '$(PROFILE)': choose one of $$(ls profiles | sed 's/.yaml//' | tr '\n' ' ')"; exit 2; }
	cp profiles/$(PROFILE).yaml params.yaml
	@echo "params.yaml is now the '$(PROFILE)' profile; see what changed with: dvc params diff"

bench: setup
	$(PY) bench/simulate.py
	$(PY) bench/grouping.py
	$(PY) bench/train.py

clean-venv:
	rm -rf $(VENV)
