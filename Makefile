# Two entry points, each installing what it needs into .venv on a fresh machine:
#   make demo   build the testbed, compress it, evaluate, print the comparison table
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch serves the defaults; on this project's machines 2.13.0 lies on disk.
TORCH_SPEC ?= torch==2.13.0
# lmms-eval (llava-fa eval --harness lmms-eval) is installed without its requirements: they pull a CUDA
# torchvision that breaks beside the CPU torch; what its import path needs (tenacity) comes with .[test].
LMMS_EVAL_SPEC ?= lmms-eval==0.7.3

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps "$(LMMS_EVAL_SPEC)"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/llava-fa demo

test: $(BIN)/.installed
	$(BIN)/pytest -q

.PHONY: install demo test
