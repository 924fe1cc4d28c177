# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	# the CPU build of torch first, so that nothing pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	# the pretrained DCGAN face generator (GAN inversion): only its weight file is used, and its declared
	# dependencies would pull torchvision, hence --no-deps (and its Python cap does not concern a data file)
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python gan-face-generate==1.1.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dfm demo --out outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/posterior.py

clean:
	rm -rf outputs runs
