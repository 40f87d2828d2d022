# Two commands do everything on a fresh machine: `make run` and `make test`.
# Both set up on first use; `make setup` is the idempotent step they share.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/demo.yaml

.PHONY: setup run test lint typecheck generate bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/identify up --config $(CONFIG)

# Two pytest processes (pytest-xdist); each test module stays in one, so its
# stack starts once. TEST_WORKERS=0 runs the suite in this process alone.
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

# buf (npm) lints the protos and refuses incompatible API changes; only
# `make lint` needs it, so `make run` and `make test` never touch npm.
TOOLS_STAMP := tools/node_modules/.installed

$(TOOLS_STAMP): tools/package.json tools/package-lock.json
	cd tools && npm ci --silent --no-audit --no-fund
	touch $(TOOLS_STAMP)

lint: setup $(TOOLS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) typecheck
	$(BIN)/python scripts/protocheck.py

typecheck: setup
	$(BIN)/mypy server providers

generate: setup
	$(BIN)/python scripts/generate.py

# The peer the bench measures against (bench/peer) needs packages nothing
# else does: the `bench` extra, installed on the first `make bench`.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache tools/node_modules
