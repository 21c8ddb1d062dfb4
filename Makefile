# The README's commands. Each one sets up what it needs on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.fastunlearn-installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: install emulator demo test bench gpu-check clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed only when missing (override with TORCH_SPEC=...); the extension is then built
# against that torch, hence --no-build-isolation.
$(STAMP): $(SOURCES) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=69" wheel ninja
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --no-build-isolation -e ".[dev,demo,hf]"
	touch $@

demo: $(STAMP)
	$(BIN)/fastunlearn demo --out fastunlearn-demo
	$(BIN)/fastunlearn demo --task i2i --out fastunlearn-demo/i2i

# tests/test_isa.py also runs the extension on emulated CPUs without AVX-512 or AVX2 (qemu's user-mode
# emulator, Debian's qemu-user): installed here where apt-get can, as root on x86-64; elsewhere
# those tests skip and say why.
emulator:
	@command -v qemu-x86_64 >/dev/null || [ "$$(uname -m)" != x86_64 ] || [ "$$(id -u)" != 0 ] \
	  || ! command -v apt-get >/dev/null \
	  || DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user >/dev/null \
	  || (DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user >/dev/null) \
	  || echo "qemu-user could not be installed: the emulated-CPU tests will skip"

test: $(STAMP) emulator
	$(BIN)/python -m pytest --doctest-modules fastunlearn tests

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-columns=median,iqr,rounds
	$(BIN)/python benchmarks/report.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/shard_bar.py

# On a CUDA machine with torch, Triton and nvcc already installed (no venv, no network): build for
# the local GPU, test, measure, profile; the report lands in $(GPU_CHECK_OUT).
GPU_CHECK_OUT ?= gpu-check
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_OUT)

clean:
	rm -rf build $(VENV) fastunlearn/*.so *.egg-info
