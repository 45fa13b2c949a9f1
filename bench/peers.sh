#!/usr/bin/env bash
# dcache side by side with what users would otherwise run: a Redis server (single node)
# and a 3-member etcd cluster, both from Debian's packages (installed when missing); and,
# for sets, dcache with one partition, the bound of batching writes across Raft groups.
# One load generator for all three (`dcache bench --target`), the same shape for each:
# CONNECTIONS connections, 100-byte values, 10,000 keys written once beforehand, then
# gets only and sets only, DURATION per run, ROUNDS interleaved rounds, medians.
# Everything runs on this one machine, sharing its cores with the load generator; etcd's
# data directories are on tmpfs so that no system in the table waits for a disk.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_command redis-server redis-server
need_command etcd etcd-server
need_command curl curl

DCACHE=target/release/dcache
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
KEYSPACE=10000
OUT=${OUT:-bench/results/peers.md}
use_workdir /dev/shm/dcache-peers.XXXXXX

# dcache: a 3-node local cluster (release build), default settings.
start_dcache_local "$work"

# Redis: one server, no persistence (a cache, like dcache).
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)

# etcd: three members on loopback.
start_etcd "$work"

bench() {  # bench TARGET NODES RATIO [extra flags]: prints the JSON report on one line
  local target=$1 nodes=$2 ratio=$3
  shift 3
  "$DCACHE" --nodes "$nodes" bench --target "$target" -c "$CONNECTIONS" -d "$DURATION" \
    --value-size 100 --keyspace "$KEYSPACE" --ratio "$ratio" --json "$@" 2>/dev/null |
    python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))'
}

declare -A targets=(
  [dcache]="dcache $dcache_nodes"
  [redis]="redis 127.0.0.1:$redis_port"
  [etcd]="etcd $etcd_nodes"
)
for name in dcache redis etcd; do
  read -r target nodes <<<"${targets[$name]}"
  echo "preloading $name" >&2
  preload "$target" "$nodes"
done

results="$work/results.jsonl"

# Sets on the same cluster with one partition: every write then goes to one Raft group,
# whose rounds carry many writes each, which is the most batching writes across groups
# could give; the default's 64 groups pay a round per write. Started for its own run
# and stopped after it, so that it takes no CPU from the others'.
one_partition_sets() {
  local dir="$work/one-partition-$1" default_nodes=$dcache_nodes runner nodes
  mkdir -p "$dir"
  start_dcache_local "$dir" 0 --partitions 1
  runner=${pids[-1]} nodes=$dcache_nodes dcache_nodes=$default_nodes
  preload dcache "$nodes"
  echo "{\"system\":\"dcache-one-partition\",\"op\":\"set\",\"report\":$(bench dcache "$nodes" 0:1)}" >>"$results"
  kill "$runner" 2>/dev/null || true
  wait "$runner" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  for name in dcache redis etcd; do
    read -r target nodes <<<"${targets[$name]}"
    echo "round $round/$ROUNDS: $name" >&2
    echo "{\"system\":\"$name\",\"op\":\"get\",\"report\":$(bench "$target" "$nodes" 1:0)}" >>"$results"
    echo "{\"system\":\"$name\",\"op\":\"set\",\"report\":$(bench "$target" "$nodes" 0:1)}" >>"$results"
    if [ "$name" = dcache ]; then
      echo "{\"system\":\"dcache-local\",\"op\":\"get\",\"report\":$(bench "$target" "$nodes" 1:0 --consistency local)}" >>"$results"
    fi
  done
  echo "round $round/$ROUNDS: dcache, one partition" >&2
  one_partition_sets "$round"
done

python3 - "$results" "$OUT" "$ROUNDS" "$DURATION" "$CONNECTIONS" <<'PY'
import json, statistics, subprocess, sys
results, out, rounds, duration, conns = sys.argv[1:]
runs = {}
for line in open(results):
    r = json.loads(line)
    op = r["report"][r["op"]]
    runs.setdefault((r["system"], r["op"]), []).append(
        (op["ops_per_sec"], op["latency_ms"]["p50"], op["latency_ms"]["p99"], op["errors"]))
def cell(system, op):
    values = runs.get((system, op))
    if not values:
        return "–", "–", "–"
    med = lambda i: statistics.median(v[i] for v in values)
    errors = sum(v[3] for v in values)
    ops = f"{med(0):,.0f}" + (f" ({errors} errors)" if errors else "")
    return ops, f"{med(1):.2f} ms", f"{med(2):.2f} ms"
names = {
    "dcache": "dcache, 3 nodes, R=3 (linearizable gets)",
    "dcache-local": "dcache, 3 nodes, `consistency=local` gets",
    "redis": "Redis 7, one server, no persistence",
    "etcd": "etcd 3.4, 3 members, WAL on tmpfs",
    "dcache-one-partition": "dcache, 3 nodes, one partition (`--partitions 1`: one Raft group)",
}
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
lines = [
    f"`dcache bench --target …`, {conns} connections, 100-byte values, 10,000 keys, "
    f"{duration} per run, median of {rounds} interleaved rounds; all servers and the load "
    f"generator on one machine with {cpu} cores",
    "",
    "| system | get ops/s | get p50 | get p99 | set ops/s | set p50 | set p99 |",
    "| --- | --- | --- | --- | --- | --- | --- |",
]
for system in ["dcache", "dcache-local", "redis", "etcd", "dcache-one-partition"]:
    g, s = cell(system, "get"), cell(system, "set")
    if system == "dcache-local":
        s = ("–", "–", "–")
    lines.append(f"| {names[system]} | {' | '.join(g)} | {' | '.join(s)} |")
def median_ops(system, op):
    return statistics.median(v[0] for v in runs[(system, op)])
lines += [
    "",
    f"Ratios of the medians: linearizable gets {median_ops('dcache', 'get') / median_ops('redis', 'get'):.2f}× "
    f"Redis, `consistency=local` gets {median_ops('dcache-local', 'get') / median_ops('redis', 'get'):.2f}× "
    f"Redis, sets {median_ops('dcache', 'set') / median_ops('etcd', 'set'):.2f}× etcd "
    f"(one partition: {median_ops('dcache-one-partition', 'set') / median_ops('etcd', 'set'):.2f}×).",
]
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
