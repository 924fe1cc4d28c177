# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-motion bench-gan bench-scenes bench-step install clean

$(STAMP): pyproject.toml Makefile
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
	$(BIN)/dfm demo motion --out outputs/demo_motion
	$(BIN)/dfm demo gan --out outputs/demo_gan
	$(BIN)/dfm demo scenes --out outputs/demo_scenes

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/posterior.py

# these evaluate trained runs: see the README for the training commands
bench-motion: $(STAMP)
	$(BIN)/python benchmarks/motion.py

bench-gan: $(STAMP)
	$(BIN)/python benchmarks/gan.py

bench-scenes: $(STAMP)
	$(BIN)/python benchmarks/scenes.py

# one training step of the paper-scale 3-D model on this CPU (AdamW and Adafactor: ~15 GB of RAM, 10 min)
bench-step: $(STAMP)
	$(BIN)/python benchmarks/step.py train.optimizer=adafactor --steps 1 --warmup 1 --variants adaptive_mmap

clean:
	rm -rf outputs runs
