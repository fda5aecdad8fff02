# `make test` and `make demo` create .venv when it is missing and install the package into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := envs/constraints-cpu.txt
JOBS ?= 2

# `make report`: bring a study up to date through PROFILE (CONFIGS layered over config.yaml) and write
# REPORT, e.g. make report PROFILE=profiles/slurm CONFIGS=my-study.yaml REPORT=results/report.html
PROFILE ?= profiles/slurm
CONFIGS ?=
REPORT ?= results/report.html
SNAKEMAKE = PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake
# The cell diagrams need Graphviz's `dot`, which pip cannot install.
NEED_DOT = @command -v dot >/dev/null || { echo "make $@: Graphviz's dot is missing (it draws the report's cell diagrams): sudo apt-get install -y graphviz (conda: conda install -c conda-forge graphviz)"; exit 1; }

.PHONY: test demo demo-slurm report venv lint clean-demo

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(NEED_DOT)
	$(SNAKEMAKE) --profile profiles/local --cores $(JOBS)
	$(SNAKEMAKE) --profile profiles/local --cores $(JOBS) --report results/report.html
	@echo; cat results/cv_table.md; echo; echo "report: results/report.html"

# The demo study through SLURM jobs (profiles/slurm) on CPU nodes, into results-slurm/.
demo-slurm: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --profile profiles/slurm --configfiles config/demo.yaml config/demo-slurm.yaml
	@echo; cat results-slurm/cv_table.md

report: $(STAMP)
	$(NEED_DOT)
	$(SNAKEMAKE) --profile $(PROFILE) $(if $(CONFIGS),--configfiles $(CONFIGS))
	$(SNAKEMAKE) --profile $(PROFILE) $(if $(CONFIGS),--configfiles $(CONFIGS)) --report $(REPORT)
	@echo "report: $(REPORT)"

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/ruff check scnas tests benchmarks workflow/scripts
	$(BIN)/ruff format --check scnas tests benchmarks workflow/scripts
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint

# Every benchmark against its peer (nnU-Net v2, batchgeneratorsv2, MONAI, SimpleITK), agreement checked
# first, then interleaved timings: benchmarks/results/<machine>.json and .md. The peers come from the
# `bench` extra. BENCH_ARGS=--quick for tiny sizes, BENCH_ARGS="--only NAME ..." for some of them.
BENCH_STAMP := $(VENV)/.bench-installed
.PHONY: bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# `make study DATA=DIR`: the real-data study of config/hippocampus-study.yaml (DIR holds Task04_Hippocampus/),
# with the nnU-Net v2 reference (the `study` extra), resumable; then its small outputs are copied into
# studies/hippocampus/. FOLDS="[0]" runs (and tabulates) only those folds, a study in parts.
STUDY_CONFIG := config/hippocampus-study.yaml
STUDY_OUT := studies/hippocampus
STUDY_STAMP := $(VENV)/.study-installed
.PHONY: study

$(STUDY_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[study]'
	touch $(STUDY_STAMP)

study: $(STUDY_STAMP)
	@test -n "$(DATA)" || { echo "make study: give DATA=DIR, the folder that holds Task04_Hippocampus/"; exit 1; }
	$(SNAKEMAKE) --cores $(JOBS) --keep-going --configfiles $(STUDY_CONFIG) --config data_root=$(abspath $(DATA)) $(if $(FOLDS),folds="$(FOLDS)")
	$(BIN)/scnas export --results results-study --out $(STUDY_OUT) --configs $(STUDY_CONFIG) --data-root $(abspath $(DATA)) --note "folds $(if $(FOLDS),$(FOLDS),all)"

# `make study-part DATA=DIR FOLDS="[1]"`: those folds alone, into results-part/, added to studies/hippocampus/ by
# `scnas export --merge` (a study in parts on machines that do not keep a results folder between sittings).
.PHONY: study-part
study-part: $(STUDY_STAMP)
	@test -n "$(DATA)" -a -n "$(FOLDS)" || { echo 'make study-part: give DATA=DIR (the folder that holds Task04_Hippocampus/) and FOLDS="[K, ...]"'; exit 1; }
	$(SNAKEMAKE) --cores $(JOBS) --keep-going --configfiles $(STUDY_CONFIG) --config data_root=$(abspath $(DATA)) folds="$(FOLDS)" results=results-part
	$(BIN)/scnas export --results results-part --out $(STUDY_OUT) --configs $(STUDY_CONFIG) --data-root $(abspath $(DATA)) --merge --note "folds $(FOLDS)"

clean-demo:
	rm -rf results/Demo*
