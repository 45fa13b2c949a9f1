#!/usr/bin/env bash
# dcache side by side with what users would otherwise run: a Redis server (single node)
# and a 3-member etcd cluster, both from Debian's packages (installed when missing).
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
  "$DCACHE" --nodes "$nodes" bench --target "$target" -c "$CONNECTIONS" -n 1 \
    --value-size 100 --keyspace "$KEYSPACE" --preload --json >/dev/null 2>&1
done

results="$work/results.jsonl"
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
for system in ["dcache", "dcache-local", "redis", "etcd"]:
    g, s = cell(system, "get"), cell(system, "set")
    if system == "dcache-local":
        s = ("–", "–", "–")
    lines.append(f"| {names[system]} | {' | '.join(g)} | {' | '.join(s)} |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
