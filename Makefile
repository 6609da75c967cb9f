# RecForge: `make demo` and `make test` install into .venv first when needed.
PY := .venv/bin/python
CONFIG ?= configs/demo.yaml

.PHONY: install demo test test-fast lint docs bench-prepare clean

install:
	@bash scripts/install.sh

demo: install
	$(PY) -m recforge.cli demo --config $(CONFIG)

test: install
	@bash scripts/run_tests.sh

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	.venv/bin/ruff check .

# docs/config.md is generated from the config models (recforge/configdoc.py); add --check to compare only.
docs: install
	$(PY) -m recforge.configdoc

bench-prepare: install
	$(PY) -m scripts.bench.prepare

clean:
	rm -rf runs .pytest_cache
