# Set-up and everyday commands. Every target creates the virtual environment, installs the
# pinned requirements and compiles the custom ops first, when they are out of date.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
OPS_SOURCES := $(wildcard custom_ops/*/*.cc custom_ops/*/*.h)

.PHONY: build test demo

$(VENV)/.requirements: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# The ops compile against the TensorFlow just installed, so build isolation stays off.
$(VENV)/.built: $(VENV)/.requirements setup.py $(OPS_SOURCES)
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

test: build
	$(BIN)/python -m pytest -q tests

demo: build
	$(BIN)/python -m vox_tf.search --out runs/demo $(DEMO_FLAGS)
