# The two commands a new user needs: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs the runtime only; `make test` (and lint, bench) add the dev extras on top, so
# `make test` after `make run` installs just what is missing.
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: run test migrate lint bench soak install clean

$(RUNTIME): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(DEV)

install: $(DEV)

run: $(RUNTIME)
	$(BIN)/spendgate serve

test: $(DEV)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

migrate: $(RUNTIME)
	$(BIN)/spendgate migrate

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/mypy gateway

bench: $(DEV)
	@for script in bench/*.py; do case $$script in */soak.py|*/peers.py|*/analytics.py|*/_*) continue;; esac; \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

soak: $(DEV)  # 10 minutes of mixed traffic through three instances behind nginx
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .spendgate .pytest_cache .mypy_cache .ruff_cache
