# `make test` and `make demo` create the environment themselves, on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch, installed before the project so that the project's torch range is already
# satisfied and pip pulls no CUDA packages (see README, "Pins").
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test demo serve lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python -m demo.run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

serve: $(STAMP)
	$(BIN)/reward-service --host 127.0.0.1 --port 8000

clean:
	rm -rf $(VENV) .demo
