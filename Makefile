# Two commands for a newcomer (see README.md):
#   make demo   set everything up, then run the main job on the embedded default
#   make test   set everything up, then lint and run the test suite
# Both create .venv themselves (Python 3.11) and install the pinned requirements.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CUSTOMERS ?= 5000
SIZE ?= 100000
PYTEST_ARGS ?=

.PHONY: demo test test-clock lint bench ui clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@bash scripts/ensure-system-deps.sh
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version.split()[0]} at {sys.executable} (set PYTHON=...)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --customers $(CUSTOMERS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The clock tests at a spread of instants first (tests/support/clock.py), then the whole suite; both always
# run, and either failing fails the target.
test: lint
	@bash scripts/ensure-browser.sh
	@$(BIN)/python tests/support/clock_spread.py; spread=$$?; \
	$(BIN)/python -m pytest $(PYTEST_ARGS); suite=$$?; \
	if [ $$spread -ne 0 ]; then echo "the clock spread failed (see above)"; fi; \
	exit $$(( spread || suite ))

# Only the clock tests, once per instant of the spread.
test-clock: $(STAMP)
	$(BIN)/python tests/support/clock_spread.py

bench: $(STAMP)
	$(BIN)/python -m bench.run --size $(SIZE)

# The Airflow UI on http://localhost:8080 over the demo's Airflow home (run `make demo` first).
ui: $(STAMP)
	$(BIN)/python scripts/demo.py --ui

clean:
	rm -rf $(VENV) airflow_home demo
