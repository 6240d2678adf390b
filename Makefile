# The two commands a new user needs: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test migrate lint bench soak install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/spendgate serve

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

migrate: $(STAMP)
	$(BIN)/spendgate migrate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy gateway

bench: $(STAMP)
	@for script in bench/*.py; do case $$script in */soak.py|*/_*) continue;; esac; \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

soak: $(STAMP)  # 10 minutes of mixed traffic through three instances behind nginx
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .spendgate .pytest_cache .mypy_cache .ruff_cache
