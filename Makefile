# Two entry points for a fresh machine: `make demo` and `make test`. Each creates (or reuses) .venv and
# installs the pinned CPU environment (requirements/lock-cpu.txt, installed without dependency resolution so the
# CUDA torchvision/torchaudio/torchcodec that break `import transformers` beside CPU torch never arrive).
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= requirements/lock-cpu.txt
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint clean-cache

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
