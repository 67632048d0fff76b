# The two commands of the README: `make demo` (set up + MixTraining vs SSL+SL on Fashion-MNIST)
# and `make test` (set up + lint + the whole test suite). Both are idempotent.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PYTEST := $(PYTHON) -m pytest
# torch and torchvision must match (timm imports torchvision); 2.14.1 is the newest CUDA build
# the project is tested with. Build isolation is off because the extension builds against the
# installed torch.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
CONSTRAINTS := constraints.txt
REFRESH_VENV := .constraints-venv
# A new folder per demo run: compare never overwrites an earlier result.
DEMO_OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup data deps install constraints lint test test-cpu test-triton demo bench gpu

setup: data deps install

data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; }

# Every install takes the versions in constraints.txt (what the tests ran with), so a new
# release cannot change what `make test` runs; `make constraints` refreshes them.
deps:
	$(PIP) install -q -c $(CONSTRAINTS) torch torchvision setuptools wheel ninja

install:
	$(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) -e ".[test]"

# The newest releases of every dependency (torch pinned as TORCH_PINS) in a fresh virtual
# environment, frozen into constraints.txt. Run `make test` on the result before committing it.
constraints:
	rm -rf $(REFRESH_VENV)
	$(PYTHON) -m venv $(REFRESH_VENV)
	$(REFRESH_VENV)/bin/python -m pip install -q $(TORCH_PINS) setuptools wheel ninja
	MIXFAST_BUILD_CUDA=0 $(REFRESH_VENV)/bin/python -m pip install -q --no-build-isolation -e ".[test]"
	{ echo "# What mixfast is tested with: 'make setup' installs these (pip -c). Refresh: 'make constraints'."; \
	  echo "# Frozen on $$(date -u +%Y-%m-%d) with $$($(REFRESH_VENV)/bin/python -V) on $$(uname -m)."; \
	  $(REFRESH_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(CONSTRAINTS)
	rm -rf $(REFRESH_VENV)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test-cpu:
	$(PYTEST) -q -m "not triton"

# The Triton kernels on CPU tensors: the interpreter must be on before triton is imported.
test-triton:
	TRITON_INTERPRET=1 MIXFAST_BACKEND=triton $(PYTEST) -q -m triton

test: setup lint test-cpu test-triton

demo: setup
	$(PYTHON) -m mixfast compare --dataset fashion-mnist --fractions 0.05 1.0:1 --out $(DEMO_OUT)

bench: setup
	$(PYTHON) -m mixfast bench

# Every GPU check and benchmark in one command (run on a machine with a CUDA GPU).
gpu:
	bash benchmarks/gpu_all.sh
