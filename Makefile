# Set-up and checks. `make demo` and `make test` each create the virtual environment they need.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch from the machine's disk here; elsewhere pip fetches this version (override freely).
TORCH_SPEC ?= torch==2.13.0
# The embedded model converts once (about a minute); tests keep the converted copy here between runs.
export HELIXLOOM_TEST_CACHE ?= $(CURDIR)/.helixloom-test-cache
# llama.cpp is built from source for the llamacpp backend (about 5 minutes). A portable AVX2 build:
# a native build enables AMX on CPUs that report it, and crashes in VMs that do not let it be used.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install install-llamacpp browser demo test lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The llamacpp backend and llama-cpp-python's own server (the tests and the demo's fast path).
install-llamacpp: $(VENV)/.installed-llamacpp

$(VENV)/.installed-llamacpp: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --no-cache-dir "llama-cpp-python>=0.3.16"
	$(PY) -m pip install -q -e '.[test,llamacpp,llamacpp-server]'
	touch $@

# The demo runs on llama.cpp (the fast path: built once, about 5 minutes); if it cannot be built
# here, the same demo runs on transformers.
demo: install
	$(MAKE) install-llamacpp || echo "helixloom: llama.cpp did not build; the demo runs on transformers"
	$(VENV)/bin/helixloom chat --once "Why do leaves change color in autumn?" --max-tokens 64 --seed 3

# The loom UI is tested in headless Chromium from Debian (root installs it; elsewhere the test skips).
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != "0" ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

lint: install
	$(VENV)/bin/ruff check helixloom tests benchmarks scripts
	$(VENV)/bin/ruff format --check helixloom tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: lint install-llamacpp browser
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/generate.py
