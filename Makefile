# The two commands: `make demo` (caption with the embedded default model) and `make test` (the whole suite).
# Each target installs what it needs first; re-running is cheap.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test venv system clean

system:
	@scripts/ensure-system.sh python java

$(STAMP): pyproject.toml | system
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a looser request pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/python -m ccexpert_core.demo

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .torch_extensions
