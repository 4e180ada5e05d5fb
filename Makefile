# dialgate — the commands a developer and CI use. Everything installs itself.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
CONFIG ?= examples/demo.toml

.PHONY: install system-deps run test check bench clean

install: $(STAMP) system-deps

system-deps:
	@bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

run: install
	$(VENV)/bin/dialgate up --config $(CONFIG)

test: install
	@bash scripts/test.sh

check: install
	$(VENV)/bin/ruff check gateway policies simulator tests bench
	$(VENV)/bin/ruff format --check gateway policies simulator tests bench
	$(VENV)/bin/mypy --strict gateway/sip
	$(VENV)/bin/mypy gateway policies simulator

bench: install
	$(VENV)/bin/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis var
