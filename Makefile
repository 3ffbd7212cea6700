# The README's commands. Each one does its own set-up on a fresh machine:
# the virtual environment in .venv, the Python packages, the Kafka jars.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
YRDBUS := $(VENV)/bin/yrdbus

.PHONY: run test bench faults fuzz order-suite unit deps jars os-test-deps clean help

help:
	@echo "make run    - bring the bus up on its embedded default and run its main job"
	@echo "make test   - set everything up and run the tests on the real broker and engine"
	@echo "make unit   - the pure tests alone: no Java, Kafka or ClickHouse, in seconds"
	@echo "make bench  - run the benchmarks and write docs/benchmarks.md (BENCH=e2e: only that one)"
	@echo "make fuzz   - every fuzz target on 100,000 hostile inputs (docs/security.md)"
	@echo "make faults - the fault suite in full (docs/faults.md); make test runs its short form"
	@echo "make order-suite - the stage-level order suite over several seeds (ORDER_SEEDS, ORDER_DRAWS)"

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) (3.11+) is needed to build .venv" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

deps: $(VENV)/.installed

# The pinned Kafka jars (yrdbus/kafka/pom.xml) in a per-user cache folder: fetched once, then a quick check.
jars: deps
	@command -v java >/dev/null || { echo "error: java (17+) is not on PATH; it runs the Kafka broker. Debian: apt-get install openjdk-17-jre-headless" >&2; exit 1; }
	@$(YRDBUS) stack jars >/dev/null

# Debian packages the tests use (kcat: a Kafka client nobody here wrote; chromium: the wall's browser test;
# prometheus: promtool and the Prometheus that scrapes a running bus; fonts-wqy-microhei: Chinese glyphs for the
# wall's screenshots).
# Go builds Grafana's ClickHouse driver (tests/clients/clickhouse_go) with modules from the Go module proxy.
os-test-deps:
	@bash infra/os-packages.sh kcat chromium prometheus fonts-wqy-microhei
	@command -v go >/dev/null || { echo "error: go (1.26+) is not on PATH; the tests build Grafana's ClickHouse driver (clickhouse-go) with it. See https://go.dev/doc/install" >&2; exit 1; }

run: deps jars
	$(YRDBUS) run $(if $(DURATION),--duration $(DURATION),)

# The tests wait on brokers, workers and timeouts far more than they compute: TEST_WORKERS pytest-xdist
# processes (each with its own broker and engine) share them out a file at a time. TEST_WORKERS=0: one process.
# Four on two cores. Files are handed out in the order of tests/conftest.py (the longest first):
# --no-loadscope-reorder, or pytest-xdist (3.6 and later) sorts them by their number of tests, which sent the
# heaviest files, with two or three tests each, last.
TEST_WORKERS ?= 4
# The stage-level order suite (one file, so one process) runs at this share of the paper's volume in `make test`:
# at full volume it alone took 10 of a quiet suite's 14 min (15 of 19 beside two burners), the suite's long pole.
# `make order-suite` runs it at full volume over five seeds.
TEST_ORDER_SCALE ?= 0.3
test: deps jars os-test-deps
	YRDBUS_ORDER_SCALE=$(TEST_ORDER_SCALE) $(VENV)/bin/pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder,) $(PYTEST_ARGS)

# The pure tests alone (marker `unit`: rules, stages, watermarks, Faust workarounds): no Java, Kafka or ClickHouse.
unit: deps
	$(VENV)/bin/pytest -m unit -q -p no:cacheprovider $(PYTEST_ARGS)

# Hostile input (docs/security.md): each fuzz target on FUZZ_EXAMPLES inputs; the checks through a live
# server (HTTP, WebSocket) on FUZZ_E2E_EXAMPLES. `make test` runs the same tests on a few hundred.
FUZZ_EXAMPLES ?= 100000
FUZZ_E2E_EXAMPLES ?= 500
FUZZ_TESTS ?= tests/test_fuzz_codec.py tests/test_fuzz_importer.py tests/test_fuzz_gateway.py tests/test_fuzz_queries.py
fuzz: deps jars
	YRDBUS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) YRDBUS_FUZZ_E2E_EXAMPLES=$(FUZZ_E2E_EXAMPLES) \
		$(VENV)/bin/pytest $(FUZZ_TESTS) -q -W ignore::DeprecationWarning --durations=0 \
		--hypothesis-show-statistics $(PYTEST_ARGS)

# The fault suite (docs/faults.md): every fault with the full workload and a one-minute ClickHouse outage;
# prints the table fault / events published / rows / alerts expected and found / lost / doubled.
# `make test` runs the same tests in their short form (YRDBUS_FAULTS=short, the default).
faults: deps jars
	YRDBUS_FAULTS=full $(VENV)/bin/pytest tests/faults -q -p no:cacheprovider $(PYTEST_ARGS)

# The order suite (tests/test_order_suite.py) over several seeds and draws of each random order, at full
# volume (ORDER_SCALE); `make test` runs one seed and one draw at TEST_ORDER_SCALE. Each seed's deliveries take
# some 20 s of CPU each. Then the real-broker variants, the kill-and-restart one (d) among them (not in
# `make test`: see the README), and the scale-out test.
ORDER_SEEDS ?= 11,23,31,47,59
ORDER_DRAWS ?= 2
ORDER_SCALE ?= 1.0
order-suite: deps jars
	YRDBUS_ORDER_SEEDS=$(ORDER_SEEDS) YRDBUS_ORDER_DRAWS=$(ORDER_DRAWS) YRDBUS_ORDER_SCALE=$(ORDER_SCALE) $(VENV)/bin/pytest tests/test_order_suite.py tests/test_order_suite_other_orders.py \
		-q -p no:cacheprovider -n 0 $(PYTEST_ARGS)
	YRDBUS_ORDER_KILLS=1 $(VENV)/bin/pytest tests/test_order_suite_broker.py \
		tests/test_scaleout.py -q -p no:cacheprovider -n 0 $(PYTEST_ARGS)

# Benchmark tools (the `bench` extra: psutil, py-spy) and the Quix Streams peer of bench/peer_quix.py in
# a venv of its own (quixstreams pins confluent-kafka<2.13, the bus 2.16). `make bench BENCH=e2e` runs one.
$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

.venv-peer/.installed: bench/peer-requirements.txt
	$(PYTHON) -m venv .venv-peer
	.venv-peer/bin/python -m pip install -q -r bench/peer-requirements.txt
	@touch $@

bench: deps jars $(VENV)/.bench-installed .venv-peer/.installed
	$(PY) -m bench $(BENCH)

clean:
	rm -rf $(VENV) .venv-peer
