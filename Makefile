# The two user-facing commands are `make demo` and `make test`; the rest serve developers.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint docs bench bench-full bench-gpu register clean

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
# Two pytest-xdist workers: the end-to-end tests mostly wait on NNI, and each test owns its
# experiment folder, port and NNI registry, so two run side by side (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

test: lint
	$(PYTEST); rc=$$?; [ $$rc -ne 5 ] || echo "make test: pytest collected no tests" >&2; exit $$rc

test-fast: lint
	$(PYTEST) -m "not slow"; rc=$$?; [ $$rc -ne 5 ] || echo "make test-fast: no tests" >&2; exit $$rc

# The documentation site (MkDocs, docs/ -> site/); tests/test_docs.py builds it strict in make test.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# `make bench`: the headline comparisons, about 15 minutes on 2 cores (fewer seeds, fewer
# landscapes); `make bench-full`: that, then everything else (hours), written under results/full.
BENCH_NETS := mlp-0.90,cnn-0.90,mlp8-0.90
BENCH_LANDSCAPES := analytic,additive-0,interact-0,$(BENCH_NETS)
# the ResNet landscapes take ~1 s an evaluation: fewer contenders and trials there
CHEAP_NETS := mlp-0.90,cnn-0.90,deepmlp-0.90,mlp8-0.90,mlp-0.95,cnn-0.95,deepmlp-0.95,mlp8-0.95
CHEAP_LANDSCAPES := analytic,additive-0,additive-1,additive-2,interact-0,interact-1,interact-2,$(CHEAP_NETS)
RESNETS := resnet-0.90,resnet-0.95,resnet20-0.90,resnet20-0.95
FULL := results/full

bench: venv
	$(PY) -m benchmarks.tuner_latency
	$(PY) -m benchmarks.masking --zoo ''
	$(PY) -m benchmarks.assessor
	$(PY) -m benchmarks.tuners --objective digits --seeds 5 --tuners prunetpe,tpe,random,anneal
	$(PY) -m benchmarks.best_known --landscapes $(BENCH_NETS) --evaluations 500 --restarts 2
	$(PY) -m benchmarks.allocation --landscapes $(BENCH_LANDSCAPES) \
		--tuners prunetpe,prunetpe-local,tpe,anneal,random --seeds 5 --wide off

bench-full: bench
	$(PY) -m benchmarks.masking
	$(PY) -m benchmarks.tuners --out $(FULL)
	$(PY) -m benchmarks.best_known --landscapes $(CHEAP_NETS)
	$(PY) -m benchmarks.roughness --landscapes mlp-0.90,cnn-0.90,mlp8-0.90
	$(PY) -m benchmarks.allocation --landscapes $(CHEAP_LANDSCAPES) --cap prunetpe-tpe=5 --out $(FULL)
	$(PY) -m benchmarks.best_known --landscapes $(CHEAP_NETS) --evaluations 60 --restarts 10 \
		--out $(FULL)/es60_small.json
	$(PY) -m benchmarks.best_known --landscapes resnet-0.90 --evaluations 500 --restarts 1
	$(PY) -m benchmarks.best_known --landscapes resnet20-0.90 --evaluations 300 --restarts 1
	$(PY) -m benchmarks.allocation --landscapes $(RESNETS) --tuners prunetpe,prunetpe-local,tpe --seeds 10 \
		--cap tpe=2 --budget 180 --budget-cap prunetpe=60,prunetpe-local=60 --wide off --out $(FULL)/resnets
	$(PY) -m benchmarks.best_known --landscapes resnet-0.90,resnet20-0.90 --evaluations 60 \
		--restarts 10 --out $(FULL)/es60.json
	$(PY) -m benchmarks.zoo
	$(PY) -m benchmarks.heuristics
	$(PY) -m benchmarks.zoo_tuners --out $(FULL)
	$(PY) -m benchmarks.proxy_rank
	$(PY) -m benchmarks.proxy_calibration
	$(PY) -m benchmarks.zoo_tuners --models resnet_digits,mobilenet_digits,vit_digits --target 0.9 \
		--tuners prunetpe-presearch,prunetpe,tpe --proxy-val half --out $(FULL)/saving-0.9
	$(PY) -m benchmarks.zoo_tuners --models resnet_digits,mobilenet_digits --target 0.95 \
		--tuners prunetpe-presearch,prunetpe,tpe --proxy-val half --out $(FULL)/saving-0.95
	$(PY) -m benchmarks.channel_tuners --out $(FULL)
	$(PY) -m benchmarks.channel_latency --multiples 1,8 --repeats 15 --picks $(FULL)/channel_tuners.json --operators \
		--out $(FULL)
	$(PY) -m benchmarks.latency_predictors --out $(FULL)
	$(PY) -m benchmarks.channel_latency --multiples 1,4,8,16 --targets 0.5 --batches 16 --repeats 15 --onnx \
		--picks $(FULL)/channel_tuners.json --out $(FULL)/onnx
	$(MAKE) bench-gpu
	$(PY) -m benchmarks.remote_overhead

# CUDA (docs/channel.md, "On a GPU"): the channel latency table at batch 64 and 1 in fp32 and
# bf16, and the masked fine-tuning step against the dense step; skipped without a GPU.
GPU := $(FULL)/gpu
bench-gpu: venv
	@if ! $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
		echo "bench-gpu: no CUDA device, skipped" >&2; exit 0; fi; \
	for dtype in float32 bfloat16; do \
		$(PY) -m benchmarks.channel_latency --device cuda --dtype $$dtype --multiples 1,8 \
			--targets 0.5,0.7 --batches 1,64 --repeats 15 --picks $(FULL)/channel_tuners.json \
			--out $(GPU)/$$dtype || exit 1; \
	done; \
	$(PY) -m benchmarks.masking --device cuda --out $(GPU)/masking

clean:
	rm -rf $(VENV) results build *.egg-info
