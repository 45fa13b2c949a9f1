#!/usr/bin/env bash
# dcache's Redis-protocol front door against Redis itself, with Redis's own load
# generator: `redis-benchmark --cluster` against a 3-node `dcache local` (every node
# with its RESP listener; redis-benchmark finds the slots' leaders with CLUSTER NODES
# and follows MOVED) and plain `redis-benchmark` against one Redis server, both from
# Debian's packages (installed when missing). The same shape for both: CONNECTIONS
# connections, 100-byte values, SET then GET over a 10,000-key keyspace (-r), REQUESTS
# requests per test, without pipelining and with -P 16; ROUNDS interleaved rounds,
# medians. Everything runs on this one machine, sharing its cores with the load
# generator. First rung (-P 1): dcache GET >= 0.5x and SET >= 0.3x Redis's ops/s.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_command redis-server redis-server
need_command redis-benchmark redis-tools
need_command redis-cli redis-tools

DCACHE=target/release/dcache
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-200000}
CONNECTIONS=${CONNECTIONS:-50}
PIPELINES=${PIPELINES:-1 16}
KEYSPACE=10000
OUT=${OUT:-bench/results/resp.md}
NOTE=${NOTE:-}  # appended to the table's header, e.g. "a busy machine"
use_workdir /dev/shm/dcache-resp.XXXXXX

# dcache: a 3-node local cluster (release build), default settings, RESP on.
start_dcache_local "$work"
dcache_resp=$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["nodes"][0]["resp_addr"])' "$work/dcache/local-cluster.json")
[ "$dcache_resp" != None ] || { echo "dcache local started no RESP listener" >&2; exit 1; }

# Redis: one server, no persistence (a cache, like dcache).
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  [ "$(redis-cli -p "$redis_port" PING 2>/dev/null)" = PONG ] && break
  sleep 0.1
done

wait_resp_cluster "$dcache_resp" 3

# run SYSTEM PIPELINE: one redis-benchmark run of SET then GET; appends its CSV rows to
# results.csv as "system,pipeline,test,rps,avg,min,p50,p95,p99,max".
run() {
  local system=$1 pipeline=$2 target
  if [ "$system" = dcache ]; then
    target=(--cluster -h "${dcache_resp%:*}" -p "${dcache_resp##*:}")
  else
    target=(-h 127.0.0.1 -p "$redis_port")
  fi
  redis-benchmark "${target[@]}" -c "$CONNECTIONS" -d 100 -r "$KEYSPACE" -n "$REQUESTS" \
    -P "$pipeline" -t set,get --csv >"$work/run.csv" 2>"$work/run.err" || {
    echo "redis-benchmark against $system (-P $pipeline) failed:" >&2
    cat "$work/run.err" "$work/run.csv" >&2
    exit 1
  }
  grep -E '^"(SET|GET)",' "$work/run.csv" | tr -d '"' | sed "s/^/$system,$pipeline,/" \
    >>"$work/results.csv"
  grep -q '^"GET",' "$work/run.csv" || {
    echo "redis-benchmark against $system (-P $pipeline) printed no GET row:" >&2
    cat "$work/run.err" "$work/run.csv" >&2
    exit 1
  }
}

for round in $(seq "$ROUNDS"); do
  for pipeline in $PIPELINES; do
    for system in dcache redis; do
      echo "round $round/$ROUNDS: $system -P $pipeline" >&2
      run "$system" "$pipeline"
    done
  done
done

python3 - "$work/results.csv" "$OUT" "$ROUNDS" "$REQUESTS" "$CONNECTIONS" "$NOTE" <<'PY'
import csv, statistics, subprocess, sys, time
results, out, rounds, requests, conns, note = sys.argv[1:]
runs = {}
for system, pipeline, test, rps, _avg, _min, p50, _p95, p99, _max in csv.reader(open(results)):
    runs.setdefault((system, int(pipeline), test), []).append(
        (float(rps), float(p50), float(p99)))
med = lambda key, i: statistics.median(v[i] for v in runs[key])
names = {
    "dcache": "dcache, 3 nodes, R=3 (`redis-benchmark --cluster`)",
    "redis": "Redis 7, one server, no persistence",
}
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
              if line.startswith("model name")), "unknown CPU")
version = subprocess.run(["redis-benchmark", "--version"], capture_output=True,
                         text=True).stdout.split()[1:2] or ["?"]
lines = [
    f"`redis-benchmark` {version[0]}, {conns} connections, 100-byte values (-d 100), "
    f"SET then GET over 10,000 keys (-r 10000), {int(requests):,} requests per test, "
    f"median of {rounds} interleaved rounds; all servers and the load generator on one "
    f"machine with {cpu} cores ({model}), {time.strftime('%Y-%m-%d')}"
    + (f", {note}" if note else "")
    + ". With -P 16 a latency is a whole pipeline's.",
    "",
    "| system | -P | SET ops/s | SET p50 | SET p99 | GET ops/s | GET p50 | GET p99 "
    "| SET vs Redis | GET vs Redis |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]
pipelines = sorted({p for (_, p, _) in runs})
ratios = {}
for pipeline in pipelines:
    for system in ["dcache", "redis"]:
        cells = []
        for test in ["SET", "GET"]:
            key = (system, pipeline, test)
            if key not in runs:
                cells += ["–", "–", "–"]
                continue
            cells += [f"{med(key, 0):,.0f}", f"{med(key, 1):.2f} ms", f"{med(key, 2):.2f} ms"]
        for test in ["SET", "GET"]:
            mine, theirs = (system, pipeline, test), ("redis", pipeline, test)
            if mine in runs and theirs in runs:
                ratio = med(mine, 0) / med(theirs, 0)
                ratios[(system, pipeline, test)] = ratio
                cells.append(f"{ratio:.2f}×")
            else:
                cells.append("–")
        lines.append(f"| {names[system]} | {pipeline} | {' | '.join(cells)} |")
if 1 in pipelines:
    get, set_ = ratios.get(("dcache", 1, "GET")), ratios.get(("dcache", 1, "SET"))
    verdict = lambda ratio, floor: (
        "–" if ratio is None else f"{ratio:.2f}× ({'met' if ratio >= floor else 'not met'})")
    lines += [
        "",
        f"First rung, -P 1: dcache GET ≥ 0.5× Redis: {verdict(get, 0.5)}; "
        f"SET ≥ 0.3× Redis: {verdict(set_, 0.3)}.",
    ]
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
