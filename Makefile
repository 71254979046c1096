# The two entry points of the README: `make demo` and `make test`. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RECIPE ?= dino_vit_tiny_fmnist
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium

.PHONY: install demo demo-long test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# Installs the package (editable) with its pinned dependencies; torch/torchvision come from pip's cache.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

# Debian ships the full 60k/10k Fashion-MNIST; install it when missing and apt is available.
$(FMNIST):
	@if command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST not found at $(dir $(FMNIST)); install Debian's dataset-fashion-mnist" >&2; exit 1; \
	fi

# The explorer's tests drive Debian's Chromium (Playwright never downloads a browser here).
$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "Chromium not found at $(CHROMIUM); install Debian's chromium and chromium-driver" >&2; exit 1; \
	fi

demo: install $(FMNIST)
	$(BIN)/dinolab demo $(RECIPE)

# The demo recipe for 36 epochs (k-NN k=20 89.41 in 1 h 28 min on the 2-core Xeon with bf16 and AMX; about 2 h 30 min
# with AVX512-BF16 alone; about 6 h in fp32, where optim.epochs=18 gives 89.03 in 2 h 59 min): docs/small_data.md,
# "Thirteenth round" and "Fourteenth round"
demo-long: install $(FMNIST)
	$(BIN)/dinolab demo dino_vit_tiny_fmnist_long

test: install $(CHROMIUM)
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) runs
