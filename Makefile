# The two commands of the README.  Each sets up what it needs, idempotently.
.PHONY: setup run test lint bench

OUT ?= runs/$(shell date +%Y%m%d-%H%M%S)

setup:
	./vm/host-setup.sh

# exit 1 means "findings" (the bundled drivers have planted bugs): not a failure here
run: setup
	.venv/bin/tracedep run --out $(OUT) || [ $$? -eq 1 ]
	@echo "report: $(OUT)/index.html  $(OUT)/report.txt"

# ruff, then mypy with the modules named tracedep.* in any folder (tools/lint.py says how)
lint: setup
	.venv/bin/python tools/lint.py

test: setup lint
	.venv/bin/python -m pytest -q

bench: setup
	for b in bench/bench_*.py; do .venv/bin/python $$b || exit 1; done
