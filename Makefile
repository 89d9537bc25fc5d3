# Every target goes through scripts/setup.sh, which is idempotent and quick once everything is installed.
PY := .venv/bin/python

.PHONY: setup run test quality style bench

setup:
	bash scripts/setup.sh

run: setup
	$(PY) examples/main_job.py

quality: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

style: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: quality
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/engine.py
