# The two commands a newcomer needs: `make demo` and `make test`. Both set up first.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/$(VENV):$(PATH)

.PHONY: setup demo test test-integration test-bench airflow bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/altlake demo

test: setup
	$(VENV)/python -m pytest -q --durations=15 -n auto --maxprocesses 4 --dist loadfile -m "not integration and not bench"

# Whole-system runs (Airflow standalone in a browser, the demo, the DAG chain, takedown purges): slower,
# so apart from `make test`; .ci/run runs both.
test-integration: setup
	$(VENV)/python -m pytest -q --durations=15 -n 2 --dist loadfile -m integration

# Each benchmark run end to end at a tiny size (a dozen JVMs each, so one at a time, outside CI).
test-bench: setup
	$(VENV)/python -m pytest -q --durations=15 -m bench

airflow: setup
	$(VENV)/altlake airflow

# Each benchmark installs the tool it is compared with into its own venv under ~/.cache/altlake.
bench: setup
	$(VENV)/python -m bench.extract
	$(VENV)/python -m bench.extract.gunzip
	$(VENV)/python -m bench.download
	$(VENV)/python -m bench.images
	$(VENV)/python -m bench.clip
	$(VENV)/python -m bench.search
	$(VENV)/python -m bench.pipeline
	$(VENV)/python -m bench.near_duplicates

clean:
	rm -rf lake airflow_home .pytest_cache
