# Two entry points: `make demo` (install + run the main job) and `make test` (install + run the tests).
# Both are idempotent. On a machine without an NVIDIA GPU the CPU torch wheel (torch==2.13.0) is installed
# first so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: install install-system demo test test-slow bench

install-system:
	@if ! $(PYTHON) -c "import moderngl" >/dev/null 2>&1 || ! ldconfig -p | grep -q libEGL_mesa; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q --no-install-recommends libegl1 libgl1 libgl1-mesa-dri libegl-mesa0 libgles2 >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends libegl1 libgl1 libgl1-mesa-dri libegl-mesa0 libgles2 >/dev/null)) \
	    || echo "warning: could not install EGL/Mesa system libraries (dataset rendering will be unavailable)"; \
	  fi; \
	fi

install: install-system
	@if ! $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; \
	  else $(PIP) install -q torch==$(TORCH_VERSION); fi; \
	fi
	$(PIP) install -q -e ".[dev,data]"

demo: install
	$(PYTHON) -m lrm.models.summary tiny
	$(PYTHON) benchmarks/bench_model.py --configs tiny

test: install
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow

bench: install
	$(PYTHON) benchmarks/bench_model.py
