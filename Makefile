# rs_seg developer entry points. `make demo` and `make test` are all a fresh machine needs:
# both create .venv on first use and install the locked dependency set through constraints.txt.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Offline-friendly defaults: no model hub, no update checks, no Prefect analytics.
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: demo serve test test-fast lint format bench bench-train bench-infer bench-flows lock clean-demo

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the locked dependency set into $(VENV) (about 2 minutes the first time) ..."
	@$(PY) -m pip install -c constraints.txt -e '.[dev]' > $(VENV)/install.log 2>&1 \
	  || { tail -n 40 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

## demo: through the Prefect flows: train-cropland on synthetic scenes, then infer-new-imagery on new ones -> data/demo/fields.gpkg
demo: $(STAMP)
	$(PY) -m flows.demo --config configs/demo.yaml

## serve: a local Prefect server (UI http://127.0.0.1:4200) serving the four flows; Ctrl-C stops both.
## Options: make serve SERVE_ARGS="--port 4300 --no-schedule" (python -m flows.serve --help)
serve: $(STAMP)
	$(PY) -m flows.serve $(SERVE_ARGS)

## test: lint, type check (mypy --strict), then the whole test suite with slow tests (what CI runs)
test: $(STAMP)
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/mypy
	$(PY) -m pytest -m "slow or not slow" -q

## test-fast: the default quick run for development
test-fast: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## bench: chip-preparation benchmark (writes benchmarks/results/)
bench: $(STAMP)
	$(PY) benchmarks/bench_prepare.py

## bench-train: training throughput against the bare train step (writes benchmarks/results/train.*)
bench-train: $(STAMP)
	$(PY) benchmarks/bench_train.py

## bench-infer: scene inference against the bare model and a naive recipe (about 20 minutes)
bench-infer: $(STAMP)
	$(PY) benchmarks/bench_infer.py

## bench-flows: infer-new-imagery flow overhead against the bare loop and on local Dask (about 10 minutes)
bench-flows: $(STAMP)
	$(PY) benchmarks/bench_flows.py

## lock: re-resolve the dependency set in a scratch venv and rewrite constraints.txt
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -c constraints-base.txt -e '.[dev]'
	{ cat constraints-base.txt; echo "# --- locked set, resolved $$(date +%F) ---"; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -viE '^(torch|fastapi)=='; } > constraints.txt
	rm -rf .lock-venv

clean-demo:
	rm -rf data/demo

## test-loaded: `make test` while two busy loops keep both cores busy (a loaded 2-core CI machine);
## LOAD_BURNERS=N for another count, LOADED_TARGET=... for another target (python tests/tools/cpu_load.py --help)
LOAD_BURNERS ?= 2
LOADED_TARGET ?= test
.PHONY: test-loaded
test-loaded: $(STAMP)
	$(PY) tests/tools/cpu_load.py --burners $(LOAD_BURNERS) -- $(MAKE) $(LOADED_TARGET)

## bench-vectorize: rs-seg vectorize on a checkerboard and on noise against a bare strip read (about 10 minutes)
.PHONY: bench-vectorize
bench-vectorize: $(STAMP)
	$(PY) benchmarks/bench_vectorize.py

## bench-fields: the boundary output's inference cost, split vectorize against --no-split and bare I/O (about 8 minutes)
.PHONY: bench-fields
bench-fields: $(STAMP)
	$(PY) benchmarks/bench_fields.py

## qgis-check: the real-client tests alone (PyQGIS and GDAL's validators under /usr/bin/python3;
## they skip without python3-qgis / python3-gdal, which .ci/run installs where apt-get works)
.PHONY: qgis-check qgis-render-demo
qgis-check: $(STAMP)
	$(PY) -m pytest tests/clients -m "slow or not slow" -q

## qgis-render-demo: `make demo`'s first arrival scene, its probability and fields as QGIS draws
## them -> docs/images/qgis-fields.png (tests/clients/render_demo.py --help for options)
qgis-render-demo:
	QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/clients/render_demo.py $(RENDER_ARGS)

## bench-sparse: rs-seg infer on 100000 px wide all-nodata and sparse scenes: peak RSS must follow the width, not the height (about 10 minutes)
.PHONY: bench-sparse
bench-sparse: $(STAMP)
	$(PY) benchmarks/bench_sparse.py

## bench-refactor: issue 28's before / after check against BASELINE (a worktree of the commit before:
## git worktree add /tmp/before b559deb): import rs_seg.infer.run, rs-seg infer --help, model info
## and infer on a 1024 px scene, alternating the trees, and the heavy modules each loads (about 6 minutes)
BASELINE ?= /tmp/before
.PHONY: bench-refactor
bench-refactor: $(STAMP)
	$(PY) benchmarks/bench_refactor.py --baseline $(BASELINE)
