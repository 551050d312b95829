# The README's two commands: `make demo` and `make test`. Both create the venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test perf clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,perf]'
	touch $(STAMP)

demo: venv
	$(BIN)/bench run sweeps/quickstart.yaml

test: venv
	$(BIN)/python -m pytest -q

perf: venv
	$(BIN)/bench perf

clean:
	rm -rf $(VENV) results/*/ .pytest_cache
