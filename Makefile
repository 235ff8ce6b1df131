# The two commands a newcomer needs: `make run` and `make test`. Both set up everything.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test check chaos bench container-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m devstack run

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m devstack test $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/lint-imports
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m devstack check
	$(MAKE) test

# Not a test: starts a throw-away stack, measures it against direct upstream calls, prints a
# table and writes bench/results/<time>.json. `make bench BENCH_ARGS="--quick"` for a smoke run.
# Then the same scenarios again on top of 1,000,000 finished requests, and the retention purge
# while accepts run (issue #17's history-size run); `BENCH_HISTORY_ARGS=` skips it.
BENCH_HISTORY_ARGS ?= --history 1000000

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.run $(BENCH_ARGS)
	@if [ -n "$(strip $(BENCH_HISTORY_ARGS))" ]; then \
		PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.run $(BENCH_ARGS) $(BENCH_HISTORY_ARGS); \
	fi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.streams $(BENCH_STREAM_ARGS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.failover $(BENCH_FAILOVER_ARGS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.counters $(BENCH_COUNTERS_ARGS)

clean:
	rm -rf $(VENV) .data

chaos: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m tests.chaos $(CHAOS_ARGS)

# Not a test: builds the image, boots compose.yaml's stack and sends requests through it
# (deploy/check.sh; REQRUN_STANDINS=1 where no container registry can be reached).
container-check: $(STAMP)
	bash deploy/check.sh
