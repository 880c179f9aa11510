# The two front doors: `make sweep` (the main job) and `make test`. Both bootstrap .venv.
PY := .venv/bin/python
SPACE ?= search_spaces/prior.yaml
ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv sweep test test-fast bench clean

venv: .venv/.installed

.venv/.installed: requirements-lock.txt pyproject.toml
	test -x $(PY) || python3.11 -m venv .venv || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-lock.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

sweep: venv
	$(PY) -m st_sweeps.tune $(SPACE) $(ARGS)

# two pytest workers (TEST_WORKERS=1 for one): the Ray tests share one of them (tests/conftest.py)
TEST_WORKERS ?= 2

test: venv
	bash scripts/browser_deps.sh
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not ray and not browser" $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks.run_all --quick

clean:
	rm -rf .venv .pytest_cache .hypothesis
