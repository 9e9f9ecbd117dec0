# The two commands: `make demo` runs the digits demo end to end, `make test` runs lint, types and tests.
# Each sets up .venv from the repo's own pinned files first.
.PHONY: setup test demo lint bench

setup:
	@bash scripts/setup_venv.sh

lint: setup
	.venv/bin/ruff check dmin dmin_cli tests scripts
	.venv/bin/mypy dmin dmin_cli

test: lint
	.venv/bin/python -m pytest

demo: setup
	.venv/bin/dmin demo

bench: setup
	.venv/bin/python scripts/bench_compress.py --json
