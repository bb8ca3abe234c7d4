# The few commands a newcomer needs (README.md and docs/development.md spell them out).
.PHONY: setup demo test test-fast lint bench

setup:
	bash scripts/setup.sh --dev

demo:
	bash scripts/setup.sh && .venv/bin/mechbd demo

test:
	bash scripts/setup.sh --dev && .venv/bin/python -m pytest

test-fast:
	.venv/bin/python -m pytest -m "not slow"

lint:
	.venv/bin/ruff check mechbd tests bench probes
	.venv/bin/ruff format --check mechbd tests bench
	.venv/bin/mypy mechbd
	.venv/bin/lint-imports --no-cache

bench:
	.venv/bin/python bench/organism_build.py
