# The two commands: `make demo` (caption with the embedded default model) and `make test` (the whole suite).
# Each target installs what it needs first; re-running is cheap.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The QGIS plugin's test environment: Debian's QGIS Python, as an analyst has it (see scripts/setup-qgis-venv.sh).
QGIS_VENV := .venv-qgis
QGIS_STAMP := $(QGIS_VENV)/.installed
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test venv qgis-venv plugin system clean

system:
	@scripts/ensure-system.sh python java

$(STAMP): pyproject.toml | system
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a looser request pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# DS_BUILD_OPS=0: DeepSpeed installs as pure Python; its ops compile when first used.
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e '.[test,ray]'
	@touch $@

venv: $(STAMP)

$(QGIS_STAMP): scripts/setup-qgis-venv.sh
	scripts/setup-qgis-venv.sh $(QGIS_VENV)
	@touch $@

qgis-venv: $(QGIS_STAMP)

# The installable QGIS plugin: dist/ccexpert_qgis-VERSION.zip (Plugins › Manage and Install Plugins › Install from ZIP).
plugin:
	$(PYTHON) scripts/build_plugin.py

demo: venv
	$(BIN)/python -m ccexpert_cli.demo

# QGIS 4 (Qt 6): flake8-qgis checks the rules of QGIS's pyqt5_to_pyqt6 script (QGS4xx) over the plugin; enums scoped
# as Qt 6 wants them, the zip by the plugin repository's rules and Bandit over it are tests of the QGIS suite
# (tests/qgis/test_plugin_repository.py).
test: venv qgis-venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/flake8 --select=QGS4 qgis_plugin
	$(BIN)/python -m pytest
	@mkdir -p -m 700 $(QGIS_VENV)/runtime
	QT_QPA_PLATFORM=offscreen GDAL_PAM_ENABLED=NO XDG_RUNTIME_DIR=$(CURDIR)/$(QGIS_VENV)/runtime \
		$(QGIS_VENV)/bin/python -m pytest -c tests/qgis/pytest.ini tests/qgis

clean:
	rm -rf $(VENV) $(QGIS_VENV) .pytest_cache .torch_extensions
