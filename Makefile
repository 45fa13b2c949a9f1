# The habits of dcache. `make run` and `make test` are the two commands a fresh
# machine needs; everything a target uses is installed by the target itself.

CARGO ?= cargo
RELEASE_DIR := target/release
NODE_PORT ?= 7000

.PHONY: run test lint fmt build release crds bench bench-node bench-reads bench-memory bench-eviction clean

## run: build and start one cache node in the foreground on 127.0.0.1:$(NODE_PORT)
run: release
	$(RELEASE_DIR)/dcache-node --listen 127.0.0.1:$(NODE_PORT)

## test: format check, clippy with warnings as errors, then every test
test: lint
	$(CARGO) test --workspace --all-targets --locked
	$(CARGO) test --workspace --doc --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace --locked

release:
	$(CARGO) build --release --locked -p dcache-node

## crds: regenerate the CustomResourceDefinition from the operator's Rust types
crds:
	mkdir -p crds
	$(CARGO) run --quiet --locked -p dcache-operator -- crd > crds/distributedcache.yaml

## bench: every benchmark program; figures go to bench/results/
bench: bench-eviction bench-memory bench-node bench-reads

## bench-node: wrk against one node and against a trivial nginx (the HTTP ceiling)
bench-node: release
	bash bench/node.sh

## bench-reads: a 3-node cluster: linearizable reads by read-index vs leader lease,
## against local reads and replicated writes
bench-reads: release
	bash bench/reads.sh

## bench-memory: 1 GiB of distinct 1 KiB values into a 64 MiB budget; RSS measured
bench-memory: release
	bash bench/memory.sh

## bench-eviction: hit ratio of tinylfu vs lru under Zipf at several budgets
bench-eviction:
	$(CARGO) run --release --locked -p dcache-node --example eviction_bench

clean:
	$(CARGO) clean
