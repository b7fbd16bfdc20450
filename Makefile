# The two commands a newcomer needs: `make demo` and `make test`. Both set up first.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/$(VENV):$(PATH)

.PHONY: setup demo test airflow bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/altlake demo

test: setup
	$(VENV)/python -m pytest -q

airflow: setup
	$(VENV)/altlake airflow

bench: setup
	$(VENV)/python -m bench.extract

clean:
	rm -rf lake airflow_home .pytest_cache
