# Two entry points: `make demo` (install + run the main job) and `make test` (install + run the tests).
# Both are idempotent. On a machine without an NVIDIA GPU the CPU torch wheel (torch==2.13.0) is installed
# first so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: install install-system install-data-system install-app install-browser app data data-eval demo test test-core test-slow bench bench-data

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
	$(PIP) install -q -e ".[dev,data,diffusion,pretrained]"

demo: install
	$(PYTHON) infer.py examples/duck.png --out outputs/demo --video

# The web demo (lrm/app.py, docs/app.md): gradio in the optional `app` extra, selenium for its browser test.
install-app: install
	$(PIP) install -q -e ".[app,app-test]"

# Headless Chromium + its driver from Debian for tests/test_app.py's browser test (no browser downloads).
BROWSER_DEBS := chromium chromium-driver
install-browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q --no-install-recommends $(BROWSER_DEBS) >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(BROWSER_DEBS) >/dev/null)) \
	  || echo "warning: could not install $(BROWSER_DEBS); the web demo's browser test will be skipped"; \
	else echo "note: not root/apt: install $(BROWSER_DEBS) yourself to run the web demo's browser test"; fi

# http://127.0.0.1:7860 ; options: make app APP_ARGS="--port 8000 --mc-resolution 65"
app: install-app
	$(PYTHON) -m lrm.app $(APP_ARGS)

test: install install-app install-browser
	$(PYTHON) -m pytest -q

# the suite as a core-only install sees it (optional extras hidden; their tests skip)
test-core: install
	PYTHONPATH="$(CURDIR)/tests/core_only" $(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow

bench: install
	$(PYTHON) benchmarks/bench_model.py

# Debian packages that ship meshes for the default data set (flightgear models + assimp converter) and the
# dev eval set (assimp test models, CGAL scans). Not needed by the tests.
DATA_DEBS := flightgear-data-models assimp-utils assimp-testmodels libcgal-demo
install-data-system: install-system
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q --no-install-recommends $(DATA_DEBS) >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(DATA_DEBS) >/dev/null)) \
	  || echo "warning: could not install $(DATA_DEBS); the default set will use procedural + pybullet only"; \
	else echo "note: not root/apt: install $(DATA_DEBS) yourself for the full default set"; fi

# The default training set (docs/data.md): ~2,100 objects x 24 views at 256^2 -> data/shards/default
data: install install-data-system
	$(PYTHON) -m lrm.data.build --out data/shards/default

# The dev evaluation set of package-shipped real objects -> data/eval/dev
data-eval: install install-data-system
	$(PIP) install -q -e ".[eval-data]"
	$(PYTHON) -m lrm.evaluate.evalset --dev --out data/eval/dev

bench-data: install
	$(PYTHON) benchmarks/bench_data.py --shards data/shards/default
