# The habits of dcache. `make run` and `make test` are the two commands a fresh
# machine needs; everything a target uses is installed by the target itself.

CARGO ?= cargo
RELEASE_DIR := target/release
NODE_PORT ?= 7000
# The image `make image` builds: what the chart's operator Deployment and a
# DistributedCache's pods run by default (dcache/dcache at the workspace's version).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE ?= dcache/dcache:$(VERSION)

.PHONY: run node local demo test lint fmt build release crds manifests image image-name fuzz chaos rolling profile bench bench-node bench-reads bench-peers bench-resp bench-persistence bench-recovery bench-memory bench-eviction clean

## run: build, start a 3-node local cluster and play every demo scenario on it
run: demo

## node: build and start one standalone cache node on 127.0.0.1:$(NODE_PORT)
node: release
	$(RELEASE_DIR)/dcache-node --listen 127.0.0.1:$(NODE_PORT)

## local: build, then run a 3-node cluster on 127.0.0.1:$(NODE_PORT).. in the foreground
local: release
	$(RELEASE_DIR)/dcache local --nodes 3 --base-port $(NODE_PORT)

## demo: build, then play the demo scenarios on a cluster the demo starts itself
demo: release
	$(RELEASE_DIR)/dcache demo

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
	$(CARGO) build --release --locked -p dcache-node -p dcache-client

## crds: regenerate the CustomResourceDefinition from the operator's Rust types
crds:
	mkdir -p crds
	$(CARGO) run --quiet --locked -p dcache-operator -- crd > crds/distributedcache.yaml
	cp crds/distributedcache.yaml charts/dcache-operator/crds/distributedcache.yaml

## manifests: render manifests/install.yaml from the Helm chart (kubectl apply path)
## and copy the chart's Grafana dashboard to manifests/grafana/
manifests:
	bash tools/render-install.sh > manifests/install.yaml
	mkdir -p manifests/grafana
	cp charts/dcache-operator/dashboards/dcache.json manifests/grafana/dcache.json

## image: the container image $(IMAGE) (dcache-node, dcache-operator, dcache); needs a
## Docker engine
image:
	docker build -t $(IMAGE) .

## image-name: print the image `make image` tags (the tests compare it with the chart)
image-name:
	@echo $(IMAGE)

## fuzz: every cargo-fuzz target for FUZZ_SECONDS each (installs cargo-fuzz if missing);
## executions per target go to target/fuzz-report.txt
FUZZ_SECONDS ?= 60
fuzz:
	bash tools/fuzz.sh $(FUZZ_SECONDS)

## chaos: the chaos test (kills, isolation, cut links, rolling restarts under load) for
## CHAOS_SECONDS instead of the bounded run make test does, on release-built nodes;
## CHAOS_SEED replays a schedule; every node must be ready within 30 s of a fault's end
CHAOS_SECONDS ?= 600
CHAOS_SEED ?=
chaos:
	DCACHE_CHAOS_SECONDS=$(CHAOS_SECONDS) DCACHE_CHAOS_HEAL_SECONDS=30 $(if $(CHAOS_SEED),DCACHE_CHAOS_SEED=$(CHAOS_SEED)) $(CARGO) test --release --locked -p dcache-node --test chaos -- --nocapture no_acknowledged_write_is_lost

## rolling: ROLLING_ROUNDS rolling restarts of a 3-node memory-only cluster (every node
## killed and started empty in turn, the next as soon as the last is ready) under 8
## writers and 4 readers, on release-built nodes; prints each node's time to ready
ROLLING_ROUNDS ?= 10
rolling:
	DCACHE_ROLLING_ROUNDS=$(ROLLING_ROUNDS) DCACHE_CHAOS_HEAL_SECONDS=30 $(CARGO) test --release --locked -p dcache-node --test chaos -- --nocapture rolling_restarts_lose_nothing

## profile: a 3-node release cluster under dcache bench sets, then gets, sampled by perf
## with call graphs; the top frames (nodes and load generator) go to bench/results/profile.md
profile: release
	bash bench/profile.sh

## bench: every benchmark program; figures go to bench/results/
bench: bench-eviction bench-memory bench-node bench-reads bench-peers bench-resp bench-persistence bench-recovery

## bench-node: wrk against one node and against a trivial nginx (the HTTP ceiling)
bench-node: release
	bash bench/node.sh

## bench-reads: a 3-node cluster: linearizable reads by read-index vs leader lease,
## against local reads and replicated writes
bench-reads: release
	bash bench/reads.sh

## bench-peers: dcache (3 nodes) vs Redis (one server) vs etcd (3 members), one load
## generator, the same shape; installs redis-server and etcd-server when missing
bench-peers: release
	bash bench/peers.sh

## bench-resp: redis-benchmark --cluster against the 3-node dcache's RESP listeners vs
## redis-benchmark against one Redis, SET and GET, -P 1 and -P 16; installs
## redis-server and redis-tools when missing
bench-resp: release
	bash bench/resp.sh

## bench-persistence: writes to 3 nodes memory-only, with --fsync always and with
## --fsync interval:10, vs a 3-member etcd, data on disk; the interval's loss window
bench-persistence: release
	bash bench/persistence.sh

## bench-recovery: a node of a 3-node cluster holding 100 MB killed and restarted empty;
## time until it is ready with every partition caught up
bench-recovery: release
	bash bench/recovery.sh

## bench-memory: 1 GiB of distinct 1 KiB values into a 64 MiB budget; RSS measured
bench-memory: release
	bash bench/memory.sh

## bench-eviction: hit ratio of tinylfu vs lru under Zipf at several budgets
bench-eviction:
	$(CARGO) run --release --locked -p dcache-node --example eviction_bench

clean:
	$(CARGO) clean
