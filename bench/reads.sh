#!/usr/bin/env bash
# Replicated reads and writes on a 3-node cluster (release build, one machine): wrk
# against the leader of the benchmark key's partition, so that no request is forwarded.
# Compares the two ways a leader can serve a linearizable read, read-index (a quorum
# round of heartbeats per read batch) and leader lease (no round while the lease
# holds), with a local read (no check at all) and a replicated write. Each measurement
# is repeated ROUNDS times, interleaved, and the median reported.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_command wrk wrk
need_command curl curl

NODE=target/release/dcache-node
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
OUT=${OUT:-bench/results/reads.md}
work=$(mktemp -d)
# Node pids go to a file: start_cluster runs in a command substitution (a subshell).
stop_cluster() {
  if [ -f "$work/pids" ]; then
    # shellcheck disable=SC2046
    kill $(cat "$work/pids") 2>/dev/null || true
    while read -r pid; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done <"$work/pids"
    rm -f "$work/pids"
  fi
}
trap 'stop_cluster; rm -rf "$work"' EXIT

value=$(head -c 100 /dev/zero | tr '\0' 'v')

# The three nodes share the machine: each gets its share of the cores, as in
# `dcache local`.
threads=$(( $(nproc) / 3 > 0 ? $(nproc) / 3 : 1 ))

# Starts a 3-node cluster of one partition with --read-policy $1 and prints the API
# address of that partition's leader.
start_cluster() {
  local policy=$1 members="" api raft
  for i in 0 1 2; do
    api=$(free_port); raft=$(free_port)
    "$NODE" --listen "127.0.0.1:$api" --raft-listen "127.0.0.1:$raft" --node-id "node-$i" \
      --partitions 1 --read-policy "$policy" --max-memory 256MiB \
      --worker-threads "$threads" --http-workers "$threads" >"$work/node-$policy-$i.log" 2>&1 &
    echo $! >>"$work/pids"
    wait_http "http://127.0.0.1:$api/health"
    members+="${members:+,}{\"name\":\"node-$i\",\"api_addr\":\"127.0.0.1:$api\",\"raft_addr\":\"127.0.0.1:$raft\"}"
    echo "127.0.0.1:$api" >>"$work/apis"
  done
  local first
  first=$(head -1 "$work/apis")
  curl -fsS -X POST -H 'Content-Type: application/json' \
    --data "{\"cluster_id\":\"bench\",\"members\":[$members]}" "http://$first/cluster/init" >/dev/null
  for _ in $(seq 600); do
    if curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
      --data-binary "$value" "http://$first/cache/bench" 2>/dev/null; then break; fi
    sleep 0.1
  done
  # Wait for the balancer to settle the leader, then ask where it is.
  for api in $(cat "$work/apis"); do wait_http "http://$api/ready"; done
  sleep 5
  python3 - "$first" <<'PY'
import json, sys, urllib.request
status = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/cluster"))
members = {m["node"]["name"]: m["node"]["api_addr"] for m in status["members"]}
print(members[status["partitions"][0]["leader"]])
PY
  rm -f "$work/apis"
}


declare -A results
for round in $(seq "$ROUNDS"); do
  for policy in read-index lease; do
    echo "round $round/$ROUNDS: $policy" >&2
    leader=$(start_cluster "$policy")
    results[$policy]+="$(measure "http://$leader/cache/bench?consistency=linearizable");"
    if [ "$policy" = read-index ]; then
      results[local]+="$(measure "http://$leader/cache/bench?consistency=local");"
      results[put]+="$(VALUE_BYTES=100 KEYS=1 KEY_PREFIX=bench measure -s bench/lua/put_cycle.lua "http://$leader");"
    fi
    stop_cluster
  done
done

python3 - "$OUT" "${results[read-index]}" "${results[lease]}" "${results[local]}" "${results[put]}" "$ROUNDS" "$DURATION" "$CONNECTIONS" <<'PY'
import statistics, sys, subprocess
out, index, lease, local, put, rounds, duration, conns = sys.argv[1:]
def parse(series):
    runs = [tuple(map(float, r.split())) for r in series.split(";") if r.strip()]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
i, l, o, p = parse(index), parse(lease), parse(local), parse(put)
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
lines = [
    f"3-node cluster on one machine ({cpu} cores shared by wrk and the three nodes); wrk, "
    f"{conns} connections, {duration} per run, median of {rounds} interleaved runs; "
    "one 100-byte key, requests sent to its partition's leader",
    "",
    "| request | requests/s | p99 latency | vs local read |",
    "| --- | --- | --- | --- |",
    f"| GET `consistency=local` (no check) | {o[0]:,.0f} | {o[1]:.2f} ms | 100% |",
    f"| GET linearizable, leader lease | {l[0]:,.0f} | {l[1]:.2f} ms | {l[0]/o[0]*100:.0f}% |",
    f"| GET linearizable, read-index | {i[0]:,.0f} | {i[1]:.2f} ms | {i[0]/o[0]*100:.0f}% |",
    f"| PUT (replicated to 3) | {p[0]:,.0f} | {p[1]:.2f} ms | {p[0]/o[0]*100:.0f}% |",
]
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
