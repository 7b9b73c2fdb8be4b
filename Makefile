# convgpu: the two commands of README.md.
#   make demo   set up .venv, then `convgpu info` and `convgpu check`
#   make test   set up .venv, then the reference + compile tiers and the simulator tier
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test gpu-test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/convgpu info
	$(BIN)/convgpu check

test: $(STAMP)
	$(BIN)/python -m pytest tests -q -p no:cacheprovider
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest tests -q -p no:cacheprovider

# on a machine with a GPU (bench/gpu_check.sh runs this there)
gpu-test: $(STAMP)
	$(BIN)/python -m pytest tests -q -m gpu -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info
