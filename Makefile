# Set-up contract: `make test` and `make demo` work on a fresh machine with
# Python 3.11+ and a C++ compiler; each creates .venv if absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed

.PHONY: test demo bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "jax>=0.10.2" numpy nanobind "scikit-build-core>=0.10" \
	    pytest hypothesis matplotlib cmake ninja
	touch $(STAMP)

# Rebuilds when C++/CUDA sources changed (ninja no-op otherwise). CUDA sources
# are compiled whenever nvcc is on PATH, so a broken .cu fails here and in CI.
install: $(STAMP)
	$(PY) -m pip install -q --no-build-isolation --no-deps .

test: install
	$(VENV)/bin/pytest -q tests

demo: install
	$(PY) examples/demo.py
	$(PY) examples/moe_layer.py
	$(PY) examples/ep_shard_map.py

bench: install
	$(PY) benchmarks/align.py
	$(PY) benchmarks/dispatch.py
	$(PY) benchmarks/ep.py

clean:
	rm -rf build $(VENV)
