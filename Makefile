# The two user-facing commands are `make demo` and `make test`; the rest serve developers.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench register clean

$(STAMP): requirements.lock setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

register: venv
	$(PY) -m nni_prune_tuners register

demo: register
	$(PY) -m trials.demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing: say so instead of passing silently.
test: lint
	$(PY) -m pytest; rc=$$?; [ $$rc -ne 5 ] || echo "make test: pytest collected no tests" >&2; exit $$rc

test-fast: lint
	$(PY) -m pytest -m "not slow"; rc=$$?; [ $$rc -ne 5 ] || echo "make test-fast: no tests" >&2; exit $$rc

bench: venv
	$(PY) -m benchmarks.tuner_latency
	$(PY) -m benchmarks.masking
	$(PY) -m benchmarks.assessor
	$(PY) -m benchmarks.tuners
	$(PY) -m benchmarks.allocation
	$(PY) -m benchmarks.zoo
	$(PY) -m benchmarks.heuristics
	$(PY) -m benchmarks.zoo_tuners
	$(PY) -m benchmarks.remote_overhead

clean:
	rm -rf $(VENV) results build *.egg-info
