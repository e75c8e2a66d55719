# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch on machines without a GPU; GPU users: TORCH_SPEC="torch" (or a CUDA wheel), see README.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test gpu-check install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fusion-ser demo -o demo_out

test: install
	$(PY) -m pytest -q -x --durations=15 tests

# On a GPU machine: the CUDA tests, the torchrun data tests and bench/gpu_train.py in one go (~5-10 min).
gpu-check: install
	PY=$(PY) bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) demo_out
