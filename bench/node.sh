#!/usr/bin/env bash
# Single-node speed: wrk (50 connections, 100-byte values) against one dcache-node,
# GET and PUT, side by side in the same run with a trivial nginx that returns 100
# bytes from memory: the HTTP ceiling of this machine. Each measurement is repeated
# ROUNDS times, interleaved, and the median reported.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need_command wrk wrk
need_command nginx nginx-light
need_command curl curl

NODE=target/release/dcache-node
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
VALUE_BYTES=100
OUT=${OUT:-bench/results/node.md}
work=$(mktemp -d)
cleanup() { kill "$node_pid" "$(cat "$work/nginx.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

value=$(head -c $VALUE_BYTES /dev/zero | tr '\0' 'v')

# The ceiling: nginx, one worker per core, answering 100 bytes from memory.
nginx_port=$(free_port)
cat > "$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/error.log warn;
daemon on;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { default_type application/octet-stream; return 200 "$value"; }
  }
}
CONF
nginx -c "$work/nginx.conf"
wait_http "http://127.0.0.1:$nginx_port/cache/bench"

node_port=$(free_port)
"$NODE" --listen "127.0.0.1:$node_port" --max-memory 256MiB >"$work/node.log" 2>&1 &
node_pid=$!
node_url="http://127.0.0.1:$node_port"
wait_http "$node_url/health"
curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "$value" \
  "$node_url/cache/bench" >/dev/null


declare -A results
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  results[nginx]+="$(measure "http://127.0.0.1:$nginx_port/cache/bench");"
  results[get]+="$(measure "$node_url/cache/bench");"
  results[put]+="$(VALUE_BYTES=$VALUE_BYTES KEYS=10000 measure -s bench/lua/put_cycle.lua "$node_url");"
done

python3 - "$OUT" "${results[nginx]}" "${results[get]}" "${results[put]}" "$ROUNDS" "$DURATION" "$CONNECTIONS" <<'PY'
import statistics, sys, subprocess
out, nginx, get, put, rounds, duration, conns = sys.argv[1:]
def parse(series):
    runs = [tuple(map(float, r.split())) for r in series.split(";") if r.strip()]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
n, g, p = parse(nginx), parse(get), parse(put)
cpu = subprocess.run(["sh", "-c", "nproc"], capture_output=True, text=True).stdout.strip()
lines = [
    f"wrk, {conns} connections, 2 threads, {duration} per run, median of {rounds} interleaved runs; "
    f"100-byte values; {cpu} cores shared by wrk and the server",
    "",
    "| target | requests/s | p99 latency | share of the nginx ceiling |",
    "| --- | --- | --- | --- |",
    f"| nginx `return 200` (the ceiling) | {n[0]:,.0f} | {n[1]:.2f} ms | 100% |",
    f"| dcache-node GET | {g[0]:,.0f} | {g[1]:.2f} ms | {g[0]/n[0]*100:.0f}% |",
    f"| dcache-node PUT | {p[0]:,.0f} | {p[1]:.2f} ms | {p[0]/n[0]*100:.0f}% |",
]
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
