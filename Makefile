# convgpu: the two commands of README.md.
#   make demo   set up .venv, then `convgpu info` and `convgpu check`
#   make test   set up .venv, then the host and simulator tiers and the .cu builds, two at a time
#   make mutants  before a release: every curated mutation must be caught (tests/mutants)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-host test-sim test-cu-a test-cu-b gpu-test mutants clean

# the NVRTC of the lent GPUs' CuPy, beside the one pip picks: the compile tier builds every
# .cu with it too (tests/test_compile_cuda.py), since the two allocate registers differently
RUNTIME_NVRTC := nvidia-cuda-nvrtc==13.0.88
# torch is the tests' independent oracle and the PyTorch bridge's host; this release is the
# CPU build (a plain `torch` from PyPI is a CUDA build of several GB), installed first so
# the `torch` extra's range is already met
TORCH := torch==2.13.0

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all]"
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/runtime-nvrtc "$(RUNTIME_NVRTC)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/convgpu info
	$(BIN)/convgpu check

# four processes, two at a time: the host tier beside the simulator (which must be on before
# Numba is imported), then the .cu builds of the compile tier in two halves (complementary
# -k selections of tests/test_compile_cuda.py, the larger first), each in the slot of
# whichever tier ends first, so that both cores stay busy to the end; each one's output is
# printed whole when it ends
CU_BUILDS := tests/test_compile_cuda.py
CU_HALF := nvcc or runtime_nvrtc

test: $(STAMP)
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-host test-sim test-cu-a test-cu-b

test-host: $(STAMP)
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --ignore=$(CU_BUILDS)

test-sim: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest tests -q -p no:cacheprovider

test-cu-a: $(STAMP)
	$(BIN)/python -m pytest $(CU_BUILDS) -q -p no:cacheprovider -k "not ($(CU_HALF))"

test-cu-b: $(STAMP)
	$(BIN)/python -m pytest $(CU_BUILDS) -q -p no:cacheprovider -k "$(CU_HALF)"

# on a machine with a GPU (bench/gpu_check.sh runs this there)
gpu-test: $(STAMP)
	$(BIN)/python -m pytest tests -q -m gpu -p no:cacheprovider

# one-line mutations applied one at a time to a scratch copy of HEAD, each run against the
# tests that should catch it; writes tests/mutants/RESULTS.md (about half an hour of two cores)
mutants: $(STAMP)
	nice -n 10 $(BIN)/python tests/mutants/mutants.py

clean:
	rm -rf $(VENV) build *.egg-info
