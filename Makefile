# The study's two entry points: `make repro` (set up, run the pipeline) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= default

# DVC on these machines has no internet: no analytics, no update checks, no Studio.
export DVC_NO_ANALYTICS := 1
export DVC_STUDIO_OFFLINE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test golden profile docs params-diff metrics-diff bench clean-venv red green collect train-evidence archive archive-check hub-new push pull share gather sweep

# pyproject.toml pins Python 3.11 (the wheels the numbers were made with): the first of these that is 3.11
PYTHON ?= $(shell for p in python3.11 python3; do $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && { echo $$p; break; }; done)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -n "$(PYTHON)" && $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { echo "make setup: the study needs Python 3.11 (pyproject.toml); found $(or $(PYTHON),no python3.11 and python3 is $$(python3 --version 2>&1))$(if $(PYTHON), ($$($(PYTHON) --version 2>&1))); install it (Debian/Ubuntu: apt install python3.11 python3.11-venv) or name it: make PYTHON=/path/to/python3.11 ..." >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	@# Ptychodus's own product reader, for the test that our exported products open in it (tests/test_samples.py).
	@# --no-deps: its package declares an AI-agent stack (pydantic-ai, openai, mlflow, ...) that ptychodus.api.io
	@# does not import; what it does import (numpy, h5py, scipy, scikit-image, pydantic) the study installs above.
	$(PY) -m pip install --quiet --no-deps ptychodus==1.7.0
	touch $@

# `make repro PROFILE=<name>` switches params.yaml to that profile first; plain `make repro` runs params.yaml as it is
repro: setup
	@$(if $(filter command line environment,$(origin PROFILE)),$(MAKE) --no-print-directory profile PROFILE=$(PROFILE))
	@$(PY) stages/design.py --check   # a params mistake named here, before DVC reads the file its own way
	dvc repro
	@echo
	@echo "Results:"
	@echo "  design:              data/design.json"
	@echo "  phase C (simulated): data/phase_c/dose_<d>/patched_{train,test}.npz, overview.png"
	@echo "  phase D (overlap):   data/phase_d/dose_<d>/<view>/{train,test}.npz, metrics.json"
	@echo "  phase E (PINNs):     BP-UNet data/phase_e/dose_<d>/<view>/gs<g>/wts.h5.zip (further train.seeds: gs<g>/seed_<s>/),"
	@echo "                       PtychoPINN data/ptychopinn/dose_<d>/<view>/gs<g>/wts.h5.zip"
	@echo "                       data/{phase_e,ptychopinn}/runs/<d>-<view>/{training_manifest.json,eval_*.json,losses_*.csv}"
	@echo "  phase F (pty-chi):   data/phase_f/dose_<d>/<view>/{ptychi_reconstruction.npz,ptychi.log,reconstruction_manifest.json}"
	@echo "                       data/phase_f/tune/dose_<d>/<view>/lsqml_tuning.json (LSQML's settings, chosen on the view's training data)"
	@echo "  refine (+refine):    data/refine/dose_<d>/<view>/<network>/gs2/wts.h5.zip, data/refine/runs/<d>-<view>/refine_manifest.json"
	@echo "  hybrid (+LSQML):     data/hybrid/dose_<d>/<view>/<network>/seed_<s>/ptychi_reconstruction.npz, hybrid_manifest.json"
	@echo "  phase G (compare):   data/phase_g/dose_<d>/<view>/{metrics.json,comparison.json,comparison_metrics.csv,frc_curves.{csv,png},comparison.png}"
	@echo "                       data/phase_g/dose_<d>/<view>/products/<model>.h5 (each reconstruction as a Ptychodus product)"
	@echo "  wall times (untracked run records): data/timing/"
	@echo "  metrics:             make metrics-diff (against the last commit); or in a shell: source .venv/bin/activate; dvc metrics show"
	@echo
	@echo "The study report:     data/report/index.html (open it in a browser: every figure embedded, no network)"
	@echo "                      data/report/metrics_summary.md, ms_ssim_vs_dose.png, frc_and_phase_error_vs_fluence.png"

# both cores: a test file per worker at a time, in the order tests/conftest.py sets (the shared tiny run first)
test: setup
	$(PY) -m pytest -n auto --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Rewrite tests/golden/tiny_sha256.txt from a fresh single-machine tiny `dvc repro` (then the shared
# fan-out run is checked against it): only for a deliberate change of results
# (review `git diff tests/golden` before committing; a digest that changed on another CPU is a bug).
golden: setup
	FLY64STUDY_WRITE_GOLDEN=1 $(PY) -m pytest -q tests/test_reproducible.py::test_the_tiny_run_reproduces_the_golden_digests
	@git diff --stat tests/golden

# Switch profile: params.yaml becomes profiles/$(PROFILE).yaml merged over profiles/default.yaml
# (fly64study.profiles); `dvc params diff` shows the change.
profile: setup
	@$(PY) -m fly64study.profiles $(PROFILE)
	@echo "params.yaml is now the '$(PROFILE)' profile; see what changed with: dvc params diff"

# README.md's headline table and docs/'s figure from the committed results (after a default `make repro`)
docs: setup
	@cmp -s params.yaml profiles/default.yaml || { echo "make docs: the README shows the default profile's results; params.yaml is another (make profile PROFILE=default, then make repro)" >&2; exit 2; }
	$(PY) -m fly64study.report --readme README.md --plots data/report/plots
	cp data/report/ms_ssim_vs_dose.png docs/ms_ssim_vs_dose.png

# dvc's comparisons without activating .venv: the workspace against the last commit, or REV=<a> [REV2=<b>]
params-diff: setup
	@dvc params diff $(REV) $(REV2)

metrics-diff: setup
	@dvc metrics diff $(REV) $(REV2)

bench: setup
	$(PY) bench/simulate.py
	$(PY) bench/grouping.py
	$(PY) bench/train.py
	dvc repro   # bench/reconstruct.py reads the pipeline's test splits and bundles (a no-op when up to date)
	$(PY) bench/reconstruct.py --dose 1e3 --dose 1e4 --dose 1e5 --view dense --view sparse
	$(PY) bench/tune.py --dose 1e3
	$(PY) bench/hybrid.py   # the training splits: where hybrid.epochs may be chosen
	$(PY) bench/pipeline.py
	$(PY) bench/pinning.py
	$(PY) bench/sqrt.py
	$(PY) bench/startup.py
	$(PY) bench/ddp.py

clean-venv:
	rm -rf $(VENV)

# ---------------------------------------------------------------------------- evidence hubs
# A hub: plans/active/$(INITIATIVE)/reports/<UTC stamp>/$(HUB_NAME)/{red,green,collect,cli,prep,data,analysis}.
# The first evidence target creates one and remembers it in .evidence_hub, so red, green,
# train-evidence and archive fill the same hub; `make hub-new` starts the next; HUB=<dir> picks one.
INITIATIVE ?= STUDY-SYNTH-FLY64-DOSE-OVERLAP-001
HUB_NAME ?= phase_e_evidence
HUB ?= $(shell test -s .evidence_hub || echo "plans/active/$(INITIATIVE)/reports/$$(date -u +%Y-%m-%dT%H%M%SZ)/$(HUB_NAME)" > .evidence_hub; cat .evidence_hub)
EVIDENCE_DOSE ?= 1e3
EVIDENCE_VIEWS ?= dense baseline
EVIDENCE := $(PY) -m fly64study.evidence

red: setup        # make red TEST=<pytest selector> [LOG=<name>]: must FAIL; log in $(HUB)/red/
	$(if $(TEST),,$(error make red: give TEST=<pytest selector>))
	@$(EVIDENCE) pytest --hub "$(HUB)" --expect fail --selector "$(TEST)" $(if $(LOG),--name $(LOG))

green: setup      # make green TEST=<pytest selector> [LOG=<name>]: must PASS; log in $(HUB)/green/
	$(if $(TEST),,$(error make green: give TEST=<pytest selector>))
	@$(EVIDENCE) pytest --hub "$(HUB)" --expect pass --selector "$(TEST)" $(if $(LOG),--name $(LOG))

collect: setup    # make collect TEST=<pytest selector>: the --collect-only proof in $(HUB)/collect/
	$(if $(TEST),,$(error make collect: give TEST=<pytest selector>))
	@$(EVIDENCE) pytest --hub "$(HUB)" --expect collect --selector "$(TEST)" $(if $(LOG),--name $(LOG))

train-evidence: setup   # dvc repro of each job's phase C/D inputs (prep/), then the deterministic CLI per job (cli/)
	@$(EVIDENCE) train --hub "$(HUB)" --dose $(EVIDENCE_DOSE) $(foreach v,$(EVIDENCE_VIEWS),--view $(v))

archive: setup    # manifests, skip summary, bundles -> data/ (dvc add); checksums, manifest, summary -> analysis/
	@$(EVIDENCE) archive --hub "$(HUB)"

archive-check: setup    # re-check an archived hub's bundles against its checksums and manifest
	@$(EVIDENCE) verify --hub "$(HUB)"

hub-new:
	@rm -f .evidence_hub
	@echo "the next evidence target starts a new hub"

# ------------------------------------------------------------------------------- remotes
# The committed default remote is a local directory (.dvc_remote/, see .dvc/config); point it
# elsewhere in .dvc/config.local (docs/scaling.md, "DVC remotes"), or name one: REMOTE=<name>.
# push: what dvc.lock and the .dvc files name, and the run-cache with every file it names
# (fly64study.sharing: `dvc push --run-cache` alone leaves out the git-kept metrics tables).
push: setup
	$(PY) -m fly64study.sharing push $(if $(REMOTE),--remote $(REMOTE))

pull: setup   # then every object it brought in re-hashed (DVC trusts a remote's bytes unless it has `verify`)
	$(PY) -m fly64study.sharing pull $(if $(REMOTE),--remote $(REMOTE))

# One study on several machines (docs/scaling.md, "Running on several machines"): each runs
# `make share DOSES="1e3"` (its doses' stages, then push); one then runs `make gather`
# (fetch every share's run-cache, `dvc repro --pull`: shared stages are restored, not rerun).
# (the checks run when make reads this file: before a setup that may take minutes)
ifneq ($(filter share,$(MAKECMDGOALS)),)
  $(if $(DOSES),,$(error make share: give DOSES="<dose labels of design.doses>"))
endif
ifneq ($(filter sweep,$(MAKECMDGOALS)),)
  $(if $(and $(PARAM),$(VALUES)),,$(error make sweep: give PARAM=<params key> VALUES="<v1> <v2> ..."))
endif

share: setup
	$(PY) -m fly64study.sharing share $(foreach d,$(DOSES),--dose $(d)) $(if $(REMOTE),--remote $(REMOTE))

gather: setup   # the default remote (core.remote): `dvc repro --pull` takes no other
	$(PY) -m fly64study.sharing gather

# A queued sweep of one params key (docs/scaling.md, "Queued sweeps"), JOBS experiments at a time:
#   make sweep PARAM=design.views.sparse VALUES="0.1 0.2 0.3 0.4" JOBS=2 [TARGETS="overlap@1e3-sparse"]
JOBS ?= 1
sweep: setup
	$(PY) -m fly64study.sweeps '$(PARAM)' $(foreach v,$(VALUES),'$(v)') --jobs $(JOBS) $(foreach t,$(TARGETS),--target '$(t)')
