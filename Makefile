# Temps: the two commands are `make up` (run the platform) and `make test` (pass the tests).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/pytest -p no:cacheprovider

.PHONY: up down images prepare lint format test test-unit test-integration test-e2e test-faults bench

up:            ## prepare the host, build images, start the platform, put `temps` on PATH
	deploy/up.sh

down:          ## stop the platform (data, volumes and managed services are kept)
	deploy/down.sh

prepare:       ## Docker engine, the project's venv, the `temps` network, the base image
	deploy/prepare-host.sh

images: prepare  ## build every image locally (skips images whose inputs did not change)
	deploy/build-images.sh all

lint: prepare  ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: prepare
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: images   ## lint, then every test tier: unit, integration, e2e, faults (10 trials)
	deploy/prepare-tests.sh
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory test-unit test-integration test-e2e test-faults

test-unit:
	$(PYTEST) tests/unit

test-integration:
	$(PYTEST) tests/integration

test-e2e:
	$(PYTEST) tests/e2e

# Randomized fault injection (tests/faults): TEMPS_FAULT_TRIALS trials (10 in CI; e.g. 50
# locally); TEMPS_FAULT_SEED=<seed> replays the one trial a failure names.
TEMPS_FAULT_TRIALS ?= 10
test-faults:
	TEMPS_FAULT_TRIALS=$(TEMPS_FAULT_TRIALS) $(PYTEST) tests/faults

bench: up       ## benchmarks: ratios against a baseline measured in the same run
	$(BIN)/python bench/provision_latency.py
	$(BIN)/python bench/stats_latency.py
	$(BIN)/python bench/monitor_cycle.py

# Backup throughput (issue 11): the platform against `pg_dump -Fc | zstd | S3 put` in the same
# run, and the backup worker's peak memory per size. Starts its own parts (no `make up`);
# e.g. make bench-backup BENCH_BACKUP_ARGS="--size-mb 512 --json /tmp/backup.json"
BENCH_BACKUP_ARGS ?= --sizes 256,1024 --rounds 2
.PHONY: bench-backup
bench-backup: images  ## backup throughput against pg_dump | zstd | S3 put, worker peak memory
	$(BIN)/python bench/backup_throughput.py $(BENCH_BACKUP_ARGS)

# Pooler overhead (issue 13): SELECT 1 throughput and p99 through PgBouncer against the direct
# endpoint in the same run, and the pooled client's longest wait during a memory change against
# the direct endpoint's refusal window. Starts its own parts (no `make up`); e.g.
# make bench-pooler BENCH_POOLER_ARGS="--clients 8 --seconds 10 --json /tmp/pooler.json"
BENCH_POOLER_ARGS ?= --clients 16 --seconds 20 --rounds 2
.PHONY: bench-pooler
bench-pooler: images  ## pooled vs direct PostgreSQL: throughput, p99, longest wait in a restart
	$(BIN)/python bench/pooler_overhead.py $(BENCH_POOLER_ARGS)
