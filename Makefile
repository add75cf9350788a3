# The two commands of the README.  Each sets up what it needs, idempotently.
.PHONY: setup run test lint bench

OUT ?= runs/$(shell date +%Y%m%d-%H%M%S)

setup:
	./vm/host-setup.sh

# exit 1 means "findings" (the bundled drivers have planted bugs): not a failure here
run: setup
	.venv/bin/tracedep run --out $(OUT) || [ $$? -eq 1 ]
	@echo "report: $(OUT)/index.html  $(OUT)/report.txt"

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy --no-error-summary vm tracer analysis reports cli.py errors.py nightly.py gitbisect.py

test: setup lint
	.venv/bin/python -m pytest -q

bench: setup
	for b in bench/bench_*.py; do .venv/bin/python $$b || exit 1; done
