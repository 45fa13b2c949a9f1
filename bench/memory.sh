#!/usr/bin/env bash
# Memory held to the budget: 1 GiB of distinct 1 KiB values written into a node with a
# 64 MiB budget; the node's RSS is measured before and after, and the per-entry overhead
# that the store's weigher assumes is checked against a node with room for everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_command wrk wrk
need_command curl curl

NODE=target/release/dcache-node
BUDGET=${BUDGET:-64MiB}
VALUE_BYTES=${VALUE_BYTES:-1024}
TOTAL_WRITES=${TOTAL_WRITES:-1048576}   # x 1 KiB = 1 GiB
OUT=${OUT:-bench/results/memory.md}

start_node() { # budget -> sets PID, URL
  local port; port=$(free_port)
  "$NODE" --listen "127.0.0.1:$port" --max-memory "$1" >/dev/null 2>&1 &
  PID=$!
  URL="http://127.0.0.1:$port"
  wait_http "$URL/health"
}

stat() { curl -fsS "$URL/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

write_distinct() { # number of writes
  # wrk's threads stop at their quota but wrk itself waits out -d: stop it once the
  # node has counted every write.
  REQUESTS_PER_THREAD=$(( $1 / 2 )) VALUE_BYTES=$VALUE_BYTES \
    wrk -t2 -c32 -d600s -s bench/lua/put_distinct.lua "$URL" >/dev/null &
  local wrk_pid=$!
  while [ "$(stat sets)" -lt "$1" ] && kill -0 "$wrk_pid" 2>/dev/null; do sleep 0.5; done
  kill -INT "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" 2>/dev/null || true
}

# 1. The budget holds.
start_node "$BUDGET"
rss_empty=$(rss_kib "$PID")
write_distinct "$TOTAL_WRITES"
sleep 1
rss_full=$(rss_kib "$PID")
keys=$(stat keys); bytes=$(stat bytes); evictions=$(stat evictions); sets=$(stat sets)
kill "$PID"; wait "$PID" 2>/dev/null || true

# 2. What an entry really costs: a budget with room for everything, RSS growth per entry.
CALIBRATION_WRITES=262144
start_node 1GiB
rss_before=$(rss_kib "$PID")
write_distinct "$CALIBRATION_WRITES"
sleep 1
rss_after=$(rss_kib "$PID")
cal_keys=$(stat keys)
kill "$PID"; wait "$PID" 2>/dev/null || true

budget_kib=$(python3 -c "import sys; sys.path.insert(0,''); print($(
  echo "$BUDGET" | sed -E 's/MiB$/*1024/; s/GiB$/*1024*1024/'))")
python3 - "$OUT" <<PY
import sys
out = sys.argv[1]
budget_kib, rss_empty, rss_full = $budget_kib, $rss_empty, $rss_full
keys, bytes_, evictions, sets = $keys, $bytes, $evictions, $sets
rss_before, rss_after, cal_keys = $rss_before, $rss_after, $cal_keys
key_bytes = len("k-0-100000")
per_entry = (rss_after - rss_before) * 1024 / cal_keys
overhead = per_entry - key_bytes - $VALUE_BYTES
lines = [
  f"Memory budget: {sets} writes of {$VALUE_BYTES} B distinct values ({sets*$VALUE_BYTES/2**30:.2f} GiB) into --max-memory $BUDGET",
  "",
  "| measure | value |",
  "| --- | --- |",
  f"| budget | {budget_kib/1024:.0f} MiB |",
  f"| RSS, empty node | {rss_empty/1024:.1f} MiB |",
  f"| RSS after the writes | {rss_full/1024:.1f} MiB |",
  f"| RSS over budget (fixed overhead) | {(rss_full-budget_kib)/1024:.1f} MiB |",
  f"| keys kept / weight held | {keys} / {bytes_/2**20:.1f} MiB |",
  f"| evictions counted | {evictions} |",
  f"| measured cost per entry (RSS growth / entries, {cal_keys} entries) | {per_entry:.0f} B = key {key_bytes} + value $VALUE_BYTES + {overhead:.0f} overhead |",
]
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
