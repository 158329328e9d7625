# mimirate: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMPS := .stamps
# torch is pinned in the same pip command as everything that depends on it: a looser
# spec would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: demo test lint format bench system-deps clean help

help:
	@echo "make demo    - set up .venv, run the default model on a bundled speech clip"
	@echo "make test    - set up .venv with test dependencies and system tools, run the suite"
	@echo "make lint    - ruff check and format check"
	@echo "make bench   - run the benchmarks in benchmarks/"

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) -e '.[all]'
	@touch $@

$(STAMPS)/dev: $(STAMPS)/venv
	$(BIN)/pip install -q $(TORCH) -e '.[dev]'
	# moshi (the streaming reference for parity tests) pins an older torch; its imports
	# need only einops, safetensors and sentencepiece, installed above.
	$(BIN)/pip install -q --no-deps moshi==0.2.13
	@touch $@

# Debian tools the suite and the evaluation use: Opus and Codec 2 baselines, espeak-ng
# for synthetic speech, sox. Installed when missing and when we may (root with apt).
$(STAMPS)/system:
	@mkdir -p $(STAMPS)
	@if command -v opusenc >/dev/null && command -v c2enc >/dev/null && command -v espeak-ng >/dev/null && command -v chromedriver >/dev/null; then \
		echo "system tools present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			opus-tools codec2 espeak-ng sox chromium chromium-driver >/dev/null; \
	else \
		echo "warning: install opus-tools codec2 espeak-ng sox chromium chromium-driver (tests that need them will skip)"; \
	fi
	@touch $@

system-deps: $(STAMPS)/system

demo: $(STAMPS)/venv
	$(BIN)/mimirate demo --out $(DEMO_OUT)

test: $(STAMPS)/dev $(STAMPS)/system
	$(BIN)/python -m pytest -q

lint: $(STAMPS)/dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMPS)/dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMPS)/dev
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(STAMPS) $(DEMO_OUT) build dist src/*.egg-info
