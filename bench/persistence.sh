#!/usr/bin/env bash
# The write path with persistence: a 3-node dcache cluster memory-only, with
# `--persistence disk --fsync always`, and with `--fsync interval:10`, side by side with a
# 3-member etcd (which fsyncs its WAL before it acknowledges). Every data directory is on
# this machine's disk (under target/, not tmpfs). One load generator for all
# (`dcache bench --target`): CONNECTIONS connections, sets only of 100-byte values over
# 10,000 keys, DURATION per run, ROUNDS rounds interleaved over the systems, medians. Then, for
# `interval:10`, the loss window a machine crash would have: how long acknowledged
# writes waited for their fdatasync (the nodes' dcache_wal_unsynced_window_seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_command etcd etcd-server
need_command curl curl

NODE=target/release/dcache-node
DCACHE=target/release/dcache
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
KEYSPACE=10000
OUT=${OUT:-bench/results/persistence.md}
use_workdir "$PWD/target/bench-persistence.XXXXXX"

# The three nodes share the machine: each gets its share of the cores, as in
# `dcache local`.
threads=$(( $(nproc) / 3 > 0 ? $(nproc) / 3 : 1 ))

# start_dcache NAME FSYNC: a 3-node cluster, memory-only if FSYNC is `none`; sets
# nodes[NAME] (comma-separated API addresses).
declare -A nodes targets
start_dcache() {
  local name=$1 fsync=$2 members="" addrs="" i api raft
  for i in 0 1 2; do
    api=$(free_port) raft=$(free_port)
    local persistence=()
    if [ "$fsync" != none ]; then
      persistence=(--persistence disk --data-dir "$work/$name-$i" --fsync "$fsync")
    fi
    RUST_LOG=error,dcache_node=info NO_COLOR=1 "$NODE" --listen "127.0.0.1:$api" \
      --raft-listen "127.0.0.1:$raft" --node-id "$name-$i" "${persistence[@]}" \
      --worker-threads "$threads" --http-workers "$threads" \
      >"$work/$name-$i.log" 2>&1 &
    pids+=($!)
    members+="${members:+,}{\"name\":\"$name-$i\",\"api_addr\":\"127.0.0.1:$api\",\"raft_addr\":\"127.0.0.1:$raft\"}"
    addrs+="${addrs:+,}127.0.0.1:$api"
  done
  for addr in ${addrs//,/ }; do wait_http "http://$addr/health"; done
  curl -fsS -o /dev/null -X POST -H 'content-type: application/json' \
    -d "{\"cluster_id\":\"$name\",\"members\":[$members]}" "http://${addrs%%,*}/cluster/init"
  for addr in ${addrs//,/ }; do wait_http "http://$addr/ready" 120; done  # 65 groups a node to elect
  nodes[$name]=$addrs targets[$name]=dcache
}

bench() {  # bench TARGET NODES: prints the JSON report of one sets-only run on one line
  "$DCACHE" --nodes "$2" bench --target "$1" -c "$CONNECTIONS" -d "$DURATION" \
    --value-size 100 --keyspace "$KEYSPACE" --ratio 0:1 --json 2>/dev/null |
    python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))'
}

results="$work/results.jsonl"
windows="$work/windows.txt"
systems=(dcache-none dcache-always dcache-interval-10 etcd)
# All four systems run at once and the rounds go round-robin over them, so that a
# change in the machine's speed during the run moves every system alike (the systems
# not being measured are idle: a few percent of a core).
for fsync in none always interval:10; do
  start_dcache "dcache-${fsync//:/-}" "$fsync"
done
mkdir -p "$work/etcd"
start_etcd "$work/etcd"
nodes[etcd]=$etcd_nodes targets[etcd]=etcd
for name in "${systems[@]}"; do
  echo "preloading $name" >&2
  preload "${targets[$name]}" "${nodes[$name]}"
done
for round in $(seq "$ROUNDS"); do
  for name in "${systems[@]}"; do
    echo "round $round/$ROUNDS: $name" >&2
    echo "{\"system\":\"$name\",\"report\":$(bench "${targets[$name]}" "${nodes[$name]}")}" >>"$results"
  done
done
for addr in ${nodes[dcache-interval-10]//,/ }; do
  curl -fsS "http://$addr/metrics" | grep '^dcache_wal_unsynced_window_seconds' >>"$windows"
done

python3 - "$results" "$windows" "$OUT" "$ROUNDS" "$DURATION" "$CONNECTIONS" <<'PY'
import json, re, statistics, subprocess, sys
results, windows, out, rounds, duration, conns = sys.argv[1:]
runs = {}
for line in open(results):
    r = json.loads(line)
    op = r["report"]["set"]
    runs.setdefault(r["system"], []).append(
        (op["ops_per_sec"], op["latency_ms"]["p50"], op["latency_ms"]["p99"], op["errors"]))
names = {
    "dcache-none": "dcache, 3 nodes, memory-only (default)",
    "dcache-always": "dcache, 3 nodes, `--persistence disk --fsync always`",
    "dcache-interval-10": "dcache, 3 nodes, `--persistence disk --fsync interval:10`",
    "etcd": "etcd 3.4, 3 members, WAL on disk",
}
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
memory = statistics.median(v[0] for v in runs["dcache-none"])
lines = [
    f"`dcache bench --target … --ratio 0:1`, {conns} connections, sets of 100-byte values "
    f"over 10,000 keys, {duration} per run, median of {rounds} rounds interleaved over the systems; all servers "
    f"and the load generator on one machine with {cpu} cores, every data directory on its disk",
    "",
    "| system | set ops/s | vs memory-only | set p50 | set p99 |",
    "| --- | --- | --- | --- | --- |",
]
for system in names:
    values = runs[system]
    med = lambda i: statistics.median(v[i] for v in values)
    errors = sum(v[3] for v in values)
    ops = f"{med(0):,.0f}" + (f" ({errors} errors)" if errors else "")
    lines.append(f"| {names[system]} | {ops} | {med(0) / memory:.2f} | "
                 f"{med(1):.2f} ms | {med(2):.2f} ms |")

# The loss window of interval:10, summed over the three nodes' histograms.
buckets, total, count = {}, 0.0, 0.0
for line in open(windows):
    m = re.match(r'dcache_wal_unsynced_window_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        buckets[m.group(1)] = buckets.get(m.group(1), 0.0) + float(m.group(2))
    elif line.startswith("dcache_wal_unsynced_window_seconds_sum"):
        total += float(line.split()[-1])
    elif line.startswith("dcache_wal_unsynced_window_seconds_count"):
        count += float(line.split()[-1])
if count:
    ordered = sorted(((float("inf") if le == "+Inf" else float(le)), n) for le, n in buckets.items())
    def quantile(q):
        return next(le for le, n in ordered if n >= q * count)
    p99 = quantile(0.99)
    worst = next(le for le, n in ordered if n >= count)
    rate = statistics.median(v[0] for v in runs["dcache-interval-10"])
    lines += [
        "",
        f"Loss window of `--fsync interval:10` (a machine crash; a killed process loses "
        f"nothing, its writes are in the page cache): acknowledged writes waited "
        f"{1000 * total / count:.1f} ms on average for their fdatasync, p99 ≤ "
        f"{1000 * p99:.0f} ms, every one ≤ {1000 * worst:.0f} ms ({int(count):,} syncs "
        f"on 3 nodes); at {rate:,.0f} sets/s that is about {rate * total / count:,.0f} "
        f"acknowledged writes exposed at any moment, if every replica's machine failed at once.",
    ]
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
