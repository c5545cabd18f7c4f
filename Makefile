# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-quick test-browser test-fresh-venv test-lmms-eval tokenizer clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, alone: a CPU wheel; resolving it through other requirements pulls CUDA.
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# DEMO_ARGS: extra overrides (tests/test_readme_commands.py shortens the run with them)
demo: setup
	$(PY) -m dsvl_exp.train $(DEMO_ARGS)

# Two pytest-xdist workers (the suite alone keeps one core busy); --dist loadgroup keeps the tests
# that share a module- or session-scoped fixture in one worker (tests/conftest.py marks them).
# TEST_WORKERS=0 runs in this process, one test after another.
TEST_WORKERS ?= 2
PARALLEL := -n $(TEST_WORKERS) --dist loadgroup

test: setup
	$(PY) -m pytest -q $(PARALLEL) --durations=15

test-quick: setup
	$(PY) -m pytest -q $(PARALLEL) -m "not slow and not multiprocess"

# An export folder loaded by transformers alone, in a virtual environment built for the test (minutes).
test-fresh-venv: setup
	DSVL_TEST_FRESH_VENV=1 $(PY) -m pytest -q tests/test_fresh_venv.py

# lmms-eval beside this package, in an environment of its own (.venv-lmms; minutes): it pulls a
# torchvision that does not load beside the CPU torch, removed as docs/guide/using-a-model.md ("Serve and score") says.
LMMS_VENV := .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python
test-lmms-eval:
	test -x $(LMMS_PY) || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(LMMS_PY) -m pip install -q -e '.[dev]'
	$(LMMS_PY) -c "import torch; print('torch==' + torch.__version__)" > $(LMMS_VENV)/constraints.txt
	$(LMMS_PY) -m pip install -q -c $(LMMS_VENV)/constraints.txt "lmms-eval==0.7"
	$(LMMS_PY) -m pip uninstall -q -y torchvision
	DSVL_REQUIRE_LMMS_EVAL=1 $(LMMS_PY) -m pytest -q tests/test_lmms_eval.py

# The web demo in headless Chromium (Debian's packages; Selenium drives it, nothing is downloaded).
# The page's screenshot is also copied to outputs/serve_screenshot.png.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: setup
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium chromium-driver)
	mkdir -p outputs
	DSVL_SCREENSHOT=$(CURDIR)/outputs/serve_screenshot.png $(PY) -m pytest -q tests/test_serve_browser.py

tokenizer: setup
	$(PY) scripts/build_tokenizer.py

clean:
	rm -rf outputs multirun wandb .pytest_cache
