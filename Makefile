# Two commands matter: `make demo` (set up, train AR + MDLM, write a report) and
# `make test` (set up, run the default test suite). Both create .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := runs/demo

.PHONY: setup demo test test-all lint bench bench-train report clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sandbox.train experiment=demo objective=ar hydra.run.dir=$(DEMO)/ar
	$(BIN)/python -m sandbox.train experiment=demo objective=mdlm hydra.run.dir=$(DEMO)/mdlm
	$(BIN)/python -m analysis.report 'runs_glob=$(DEMO)/*' out=$(DEMO) 'title=Demo: AR vs MDLM on stdlib_code'
	@echo "report: $(DEMO)/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check sandbox analysis tests

bench-train: $(STAMP)
	$(BIN)/python -m sandbox.bench train

bench: bench-train

report: $(STAMP)
	$(BIN)/python -m analysis.report 'runs_glob=runs/**' out=runs/report

clean:
	rm -rf runs .cache
