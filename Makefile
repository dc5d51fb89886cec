# rankjax: `make demo` runs the embedded CPU demo; `make test` runs the whole test suite.
# Both create .venv (Python 3.11) on first use and install pinned versions from constraints.txt.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo
PYTEST_ARGS ?=

.PHONY: demo test install install-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(PY) setup.py constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m rankjax.main --config=configs/demo.py --workdir=$(WORKDIR)

test: install-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadgroup -q tests $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/train_step_bench.py

clean:
	rm -rf $(VENV) workdirs
