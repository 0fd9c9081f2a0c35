# Developer entry points. `make run` trains, evaluates and reports; `make test` installs,
# lints and runs the test suite. Every target installs what it needs first (a no-op when
# .venv already matches poetry.lock).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Extra pytest arguments, e.g. make test PYTEST_ARGS='-m "not slow" -x'
PYTEST_ARGS ?=
# pytest-xdist workers for make test: one per core of the 2-core machines the budgets are set on
# (each runs torch on one thread), each taking whole test files, so a module's fixtures (the
# README test's pipeline run) are built once; TEST_WORKERS=0 runs the tests in this one process.
TEST_WORKERS ?= 2
# Extra scripts/mutate.py arguments, e.g. make mutate MUTATE_ARGS='--only face_generation/training/ema.py'
MUTATE_ARGS ?=

.PHONY: install mutate params lint test durations run serve lock baseline plots-js bench-gpu

install:
	$(PYTHON) scripts/install.py

# Mutation testing of the modules that carry guarantees, on a copy of HEAD (not run by CI:
# minutes to an hour per module); scores in docs/mutation.md.
mutate: install
	$(BIN)/python scripts/mutate.py $(MUTATE_ARGS)

# Write to a temporary file first so a failing compose never leaves a truncated params.yaml.
params: install
	$(BIN)/python -m face_generation.config > params.yaml.tmp || { rm -f params.yaml.tmp; exit 1; }
	mv params.yaml.tmp params.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# pytest exits 5 when it collected no test: that is a failure, never a silent pass.
test: install lint
	@status=0; $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then \
		echo "make test: pytest collected no tests (exit 5); check tests/ and PYTEST_ARGS" >&2; \
	fi; \
	exit $$status

# Where the suite's time goes: the 30 slowest tests, setup included (lint skipped), e.g.
# make durations PYTEST_ARGS='-m "not slow"' for the fast tier alone.
durations: install
	$(BIN)/python -m pytest $(PYTEST_ARGS) --durations=30 --durations-min=1 -q

# Hydra overrides for the pipeline, e.g. make run RUN_ARGS='tracking.port=5101 train.steps=500'
RUN_ARGS ?=
run: install
	$(BIN)/python -m face_generation.pipeline $(RUN_ARGS)

# The web page and HTTP API over the trained models (models/<name>/model.pt), on 127.0.0.1;
# settings in configs/serve/, e.g. make serve SERVE_ARGS=serve.port=8080
SERVE_ARGS ?=
serve: install
	$(BIN)/python -m face_generation.serve $(SERVE_ARGS)

# On a CUDA machine: every family's training step and sampling beside the peers, one JSON and
# one markdown table in benchmarks/results/ (benchmarks/README.md, "GPU"), e.g.
# make bench-gpu BENCH_ARGS='--data /local/celeba-sample-10k'
BENCH_ARGS ?=
bench-gpu: install
	$(BIN)/python benchmarks/gpu.py $(BENCH_ARGS)

lock:
	$(PYTHON) scripts/lock_dependencies.py

# The committed baseline: dvc.lock and metrics/ of the default pipeline, run afresh (every
# stage, default params.yaml). Rerun after changing face_generation/ or configs/, then commit
# both; `dvc metrics diff` compares any run with them (README, "DVC").
baseline: install
	$(BIN)/python -m face_generation.pipeline --force
	git status --short dvc.lock metrics

# Offline `dvc plots show`: .dvc/html/index.html loads these instead of DVC's CDN copies; they
# are the builds of the npm packages (the versions DVC's own page asks for), fetched with npm.
VEGA_JS := vega@5.20.2:vega.min.js vega-lite@5.2.0:vega-lite.min.js vega-embed@6.18.2:vega-embed.min.js
plots-js:
	@set -e; work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT; \
	for entry in $(VEGA_JS); do \
		package=$${entry%%:*}; file=$${entry#*:}; \
		(cd "$$work" && npm pack --silent "$$package" > /dev/null && tar xzf ./*.tgz && rm ./*.tgz); \
		cp "$$work/package/build/$$file" .dvc/html/; \
		cp "$$work/package/LICENSE" ".dvc/html/$${file%.min.js}.LICENSE"; \
		rm -rf "$$work/package"; echo "$$package: .dvc/html/$$file"; \
	done
