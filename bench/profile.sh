#!/usr/bin/env bash
# Where a 3-node cluster's CPU goes: a release `dcache local` cluster under `dcache bench`
# sets, then gets (CONNECTIONS connections, 100-byte values, 10,000 keys), each sampled
# with perf (cpu-clock, DWARF call graphs) for SECONDS on the three nodes and on the load
# generator. The top frames by inclusive and by self time go to bench/results/profile.md
# (or OUT); the perf data stays in $KEEP when set. Installs linux-perf when missing.
#
# With LOAD=resp the load is `redis-benchmark --cluster` (50 connections, SET then GET)
# against the nodes' RESP listeners instead, and the heading's ops/s is its own figure.
#
#   make profile                     # or: bash bench/profile.sh
#   SECONDS_PER_PHASE=10 OUT=/tmp/p.md KEEP=/tmp/perf bash bench/profile.sh
#   LOAD=resp OUT=/tmp/resp.md bash bench/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_command perf linux-perf
need_command curl curl
LOAD=${LOAD:-http}
[ "$LOAD" != resp ] || need_command redis-benchmark redis-tools

DCACHE=${DCACHE:-target/release/dcache}
PHASE_SECONDS=${SECONDS_PER_PHASE:-8}
CONNECTIONS=${CONNECTIONS:-32}
KEYSPACE=10000
OUT=${OUT:-bench/results/profile.md}
TOP=${TOP:-25}
work=$(mktemp -d /dev/shm/dcache-profile.XXXXXX)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/*.data "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

start_dcache_local "$work"

preload dcache "$dcache_nodes"

resp_addr=$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["nodes"][0]["resp_addr"])' "$work/dcache/local-cluster.json")
[ "$LOAD" != resp ] || wait_resp_cluster "$resp_addr" 3

# resp_load PHASE: redis-benchmark --cluster for PHASE_SECONDS + 2 s; writes the JSON
# report profile() reads (ops/s from its last "overall" progress figure).
resp_load() {
  local phase=$1 test
  test=$([ "$phase" = sets ] && echo set || echo get)
  timeout --signal INT "$((PHASE_SECONDS + 2))" redis-benchmark --cluster \
    -h "${resp_addr%:*}" -p "${resp_addr##*:}" -c 50 -d 100 -r "$KEYSPACE" -n 100000000 \
    -t "$test" >"$work/$phase.out" 2>&1 || true
  tr '\r' '\n' <"$work/$phase.out" | python3 -c '
import json, re, sys
last = [m for m in re.finditer(r"overall: ([\d.]+)\) avg_msec=([\d.]+)", sys.stdin.read())]
ops = float(last[-1].group(1)) if last else 0.0
avg = float(last[-1].group(2)) if last else 0.0
key = "set" if sys.argv[1] == "sets" else "get"
print(json.dumps({key: {"ops_per_sec": ops, "latency_ms": {"mean": avg}}}))' \
    "$phase" >"$work/$phase.json"
}

# profile PHASE RATIO: load for PHASE_SECONDS + 2 s, sampled for PHASE_SECONDS after the
# first second; prints the load generator's JSON report on one line.
profile() {
  local phase=$1 ratio=$2
  if [ "$LOAD" = resp ]; then
    resp_load "$phase" &
  else
    "$DCACHE" --nodes "$dcache_nodes" bench -c "$CONNECTIONS" -d "$((PHASE_SECONDS + 2))s" \
      --value-size 100 --keyspace "$KEYSPACE" --ratio "$ratio" --json \
      >"$work/$phase.json" 2>/dev/null &
  fi
  local bench_pid=$!
  sleep 1
  # The load generator's own process: redis-benchmark under the timeout and subshell.
  local client_pid=$bench_pid
  [ "$LOAD" != resp ] || client_pid=$(pgrep -n redis-benchmark)
  perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 \
    -p "$dcache_node_pids,$client_pid" -o "$work/$phase.data" -- sleep "$PHASE_SECONDS" \
    >/dev/null 2>&1
  wait "$bench_pid"
  echo "$client_pid" >"$work/$phase.client-pid"
}

echo "profiling sets (${PHASE_SECONDS}s)..." >&2
profile sets 0:1
echo "profiling gets (${PHASE_SECONDS}s)..." >&2
profile gets 1:0

# report PHASE WHO PID-LIST MODE: the top frames, one "percent<TAB>symbol" per line.
report() {
  local phase=$1 pids=$2 mode=$3
  perf report -i "$work/$phase.data" --pid "$pids" --stdio --no-demangle \
    "$mode" -g none --sort sym --percent-limit 0.5 2>/dev/null |
    python3 -c '
import re, subprocess, sys
rows = []
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(?:([\d.]+)%\s+)?\[.\]\s+(.*)", line)
    if m:
        rows.append((float(m.group(1)), m.group(3).strip()))
names = [r[1] for r in rows]
demangled = subprocess.run(["c++filt", "-p"], input="\n".join(names), capture_output=True,
                           text=True).stdout.splitlines() if names else []
# Copies of one function (monomorphised or inlined apart) differ only by their hash:
# their times add up.
merged = {}
for (pct, _), name in zip(rows, demangled):
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    if name.startswith("0xffff"):
        continue
    total, largest = merged.get(name, (0.0, 0.0))
    merged[name] = (total + pct, max(largest, pct))
for name, (total, _) in merged.items():
    print(f"{total:.1f}\t{name}")' "$mode"
}

{
  echo "# Where the CPU goes"
  echo
  echo "\`LOAD=$LOAD bash bench/profile.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores): a 3-node release"
  if [ "$LOAD" = resp ]; then
    echo "\`dcache local\` cluster (64 partitions, R=3) under \`redis-benchmark --cluster\` with 50"
  else
    echo "\`dcache local\` cluster (64 partitions, R=3) under \`dcache bench\` with $CONNECTIONS"
  fi
  echo "connections, 100-byte values, 10,000 keys; \`perf record -e cpu-clock -F 499"
  echo "--call-graph dwarf\` for ${PHASE_SECONDS}s per phase on the three nodes and the load"
  echo "generator. Percentages are of the samples of the processes named (all threads)."
  for phase in sets gets; do
    client=$(cat "$work/$phase.client-pid")
    python3 - "$work/$phase.json" "$phase" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
ops = report.get("set" if sys.argv[2] == "sets" else "get", {})
print()
latency = ops.get("latency_ms", {})
if "p50" not in latency:  # redis-benchmark's progress line gives the mean only
    shape = f"mean {latency['mean']:.2f} ms"
else:
    shape = f"p50 {latency.get('p50', 0):.2f} ms, p99 {latency.get('p99', 0):.2f} ms"
print(f"## {sys.argv[2]}: {ops.get('ops_per_sec', 0):,.0f} ops/s, {shape}")
PY
    for who in nodes client; do
      if [ "$who" = nodes ]; then list=$dcache_node_pids; else list=$client; fi
      echo
      echo "### $phase, $who: top $TOP frames by inclusive time"
      echo
      echo "| % | frame |"
      echo "| ---: | --- |"
      report "$phase" "$list" --children | sort -t$'\t' -k1,1 -rn | awk -v top="$TOP" 'NR <= top' |
        awk -F'\t' '{gsub(/\|/, "\\|", $2); printf "| %s | `%s` |\n", $1, $2}'
      echo
      echo "### $phase, $who: top $TOP frames by self time"
      echo
      echo "| % | frame |"
      echo "| ---: | --- |"
      report "$phase" "$list" --no-children | sort -t$'\t' -k1,1 -rn | awk -v top="$TOP" 'NR <= top' |
        awk -F'\t' '{gsub(/\|/, "\\|", $2); printf "| %s | `%s` |\n", $1, $2}'
    done
  done
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT" >&2
