# Every target sets up what it needs: a fresh machine only needs python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-onnx run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: any other version pulls gigabytes of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Optional: the ONNX backend (encoder.backend = "onnx"). optimum-onnx needs transformers < 4.58,
# so this pins an older sentence-transformers than the default install.
install-onnx: $(STAMP)
	$(PY) -m pip install --quiet -e ".[onnx]"

run: $(STAMP)
	$(PY) -m bot $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_context.py
	$(PY) benchmarks/bench_retrieval.py
	$(PY) benchmarks/bench_recall.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
