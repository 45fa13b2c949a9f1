#!/usr/bin/env bash
# How long a memory-only node takes to be whole again after a crash: a 3-node release
# `dcache local` cluster (64 partitions, R=3, so every node holds every partition) is
# filled with VALUE_MB of values (1,000-byte values), then one node is killed with
# SIGKILL and restarted empty on the same addresses, as a crashed pod comes back. The
# time from the kill to its `/ready` (every partition it is placed on has re-admitted
# its new identity and it has applied everything committed) is measured, and its key
# count is compared with a survivor's. ROUNDS kills (a different node each time),
# median and worst to bench/results/recovery.md (or OUT).
#
#   make bench-recovery            # or: VALUE_MB=100 ROUNDS=3 bash bench/recovery.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_command curl curl

DCACHE=${DCACHE:-target/release/dcache}
VALUE_MB=${VALUE_MB:-100}
ROUNDS=${ROUNDS:-3}
VALUE_SIZE=1000
KEYS=$((VALUE_MB * 1000 * 1000 / VALUE_SIZE))
OUT=${OUT:-bench/results/recovery.md}
use_workdir /dev/shm/dcache-recovery.XXXXXX

# Fixed ports, so that a restarted node comes back at the address the cluster knows.
base_port=$(python3 -c 'import random; print(random.randrange(20000, 30000, 200))')
start_dcache_local "$work" "$base_port"
nodes=$dcache_nodes
IFS=, read -r -a apis <<<"$nodes"

node_pid() {  # node_pid INDEX: the pid of the process serving node INDEX's API port
  local port=${apis[$1]##*:}
  pgrep -f -- "--listen 127.0.0.1:$port " | head -n 1
}
stat_keys() {  # stat_keys API: the keys the node holds
  curl -fsS "http://$1/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["keys"])'
}

echo "writing $KEYS values of $VALUE_SIZE bytes ($VALUE_MB MB)..." >&2
"$DCACHE" --nodes "$nodes" bench -c 32 -n 1 --value-size "$VALUE_SIZE" --keyspace "$KEYS" \
  --preload --json >/dev/null 2>&1

results="$work/results.txt"
for round in $(seq "$ROUNDS"); do
  victim=$(((round - 1) % 3))
  survivor=$(((victim + 1) % 3))
  pid=$(node_pid "$victim")
  mapfile -d '' -t command <"/proc/$pid/cmdline"
  killed_at=$(date +%s%N)
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
  "${command[@]}" >>"$work/restarted-$victim.log" 2>&1 &
  pids+=($!)
  until curl -fsS -o /dev/null "http://${apis[$victim]}/ready" 2>/dev/null; do
    sleep 0.05
    if [ $(($(date +%s%N) - killed_at)) -gt 300000000000 ]; then
      echo "node $victim not ready 300 s after its kill" >&2
      tail -n 20 "$work/restarted-$victim.log" >&2
      exit 1
    fi
  done
  ready_at=$(date +%s%N)
  held=$(stat_keys "${apis[$victim]}")
  expected=$(stat_keys "${apis[$survivor]}")
  seconds=$(awk -v ns=$((ready_at - killed_at)) 'BEGIN { printf "%.2f", ns / 1e9 }')
  echo "round $round: node-$victim ready ${seconds}s after its kill, holding $held keys (a survivor: $expected)" >&2
  echo "$seconds $held $expected" >>"$results"
  # The next kill waits until the cluster is whole again (the balancer may still be
  # spreading leaders back).
  sleep 5
done

python3 - "$results" "$OUT" "$VALUE_MB" "$KEYS" <<'PY'
import statistics, sys
results, out, value_mb, keys = sys.argv[1:]
rows = [line.split() for line in open(results)]
seconds = [float(r[0]) for r in rows]
complete = all(int(r[1]) == int(r[2]) for r in rows)
lines = [
    "# Recovery of a restarted node",
    "",
    f"`make bench-recovery`: a 3-node release `dcache local` cluster (64 partitions, R=3) "
    f"holding {int(keys):,} values of 1,000 bytes ({value_mb} MB per node); one node killed "
    f"with SIGKILL and restarted empty at the same addresses, {len(rows)} times (a different "
    f"node each time); time from the kill to its `/ready`.",
    "",
    "| round | ready after | keys held / a survivor's |",
    "| --- | --- | --- |",
]
for i, (s, held, expected) in enumerate(rows, 1):
    lines.append(f"| {i} | {float(s):.1f} s | {int(held):,} / {int(expected):,} |")
lines += [
    "",
    f"Median {statistics.median(seconds):.1f} s, worst {max(seconds):.1f} s; "
    + ("every restarted node held every key when it reported ready."
       if complete else "a restarted node reported ready WITHOUT every key."),
]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
