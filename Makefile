# dialgate — the commands a developer and CI use. Everything installs itself.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
# The mypyc build of gateway/sip (scripts/build_native.py): redone when a source
# changes; with no C compiler or DIALGATE_NATIVE=0 it prints a note and the
# package runs as pure Python.
NATIVE := $(VENV)/.native
SIP_SOURCES := $(wildcard gateway/sip/*.py)
CONFIG ?= examples/demo.toml

.PHONY: install system-deps native run test check bench clean FORCE

# system-deps first: it brings the C compiler and Python headers the native build uses.
install: system-deps $(STAMP) $(NATIVE)

system-deps:
	@PY=$(PY) bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

# DIALGATE_NATIVE=0 always runs the script (it removes an earlier build) and leaves
# no stamp, so the next plain `make install` compiles again.
$(NATIVE): $(STAMP) $(SIP_SOURCES) scripts/build_native.py $(if $(filter 0,$(DIALGATE_NATIVE)),FORCE)
	@$(VENV)/bin/python scripts/build_native.py
	@$(if $(filter 0,$(DIALGATE_NATIVE)),rm -f $(NATIVE),touch $(NATIVE))

native: $(STAMP)
	@$(VENV)/bin/python scripts/build_native.py --force
	@touch $(NATIVE)

FORCE:

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis var build
	rm -f gateway/sip/*.so gateway/sip/_native_manifest.json
