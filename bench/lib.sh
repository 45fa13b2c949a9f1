# Shared pieces of the benchmark scripts. Sourced, not run.

# Installs Debian packages the benchmarks need when their command is missing.
# Usage: need_command CMD PACKAGE
need_command() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2 (for $1)..." >&2
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
  fi
}

# Makes a scratch directory `work` (from the mktemp TEMPLATE) and an empty array `pids`
# of started processes; on exit the processes are stopped and `work` is removed.
# Usage: use_workdir TEMPLATE
use_workdir() {
  work=$(mktemp -d "$1")
  pids=()
  trap stop_and_clean EXIT
}
stop_and_clean() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  rm -rf "$work"
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until URL answers 200, for at most SECONDS (default 30).
wait_http() {
  local url=$1 seconds=${2:-30}
  for _ in $(seq $((seconds * 10))); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "no answer from $url" >&2
  return 1
}

# Waits until the RESP listener at HOST:PORT says every partition is led (CLUSTER INFO
# ok) and CLUSTER NODES names NODES nodes: redis-benchmark --cluster learns the nodes
# once, and gives up on a slot map that later names a node it did not learn.
# Usage: wait_resp_cluster HOST:PORT NODES
wait_resp_cluster() {
  local host=${1%:*} port=${1##*:} nodes=$2
  for _ in $(seq 600); do
    redis-cli -h "$host" -p "$port" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok' &&
      [ "$(redis-cli -h "$host" -p "$port" CLUSTER NODES 2>/dev/null | grep -c master)" -ge "$nodes" ] &&
      return 0
    sleep 0.1
  done
  echo "the cluster behind $1 never reported $nodes nodes with every slot led" >&2
  return 1
}

# Resident set size of PID, in KiB.
rss_kib() {
  awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# Prints "requests_per_second p99_ms" for one wrk run with CONNECTIONS connections for
# DURATION; the arguments go to wrk.
measure() {
  wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$@" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
print(rps, p99)'
}

# Starts a 3-member etcd cluster on loopback with its data under DIR; appends its pids
# to the array `pids` and sets `etcd_nodes` to its client addresses (comma-separated).
# Usage: start_etcd DIR
start_etcd() {
  local dir=$1 cluster="" i
  local -a client_ports peer_ports
  etcd_nodes=""
  for i in 0 1 2; do
    client_ports[$i]=$(free_port); peer_ports[$i]=$(free_port)
    cluster+="${cluster:+,}e$i=http://127.0.0.1:${peer_ports[$i]}"
    etcd_nodes+="${etcd_nodes:+,}127.0.0.1:${client_ports[$i]}"
  done
  for i in 0 1 2; do
    etcd --name "e$i" --data-dir "$dir/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:${client_ports[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${client_ports[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token dcache-bench >"$dir/etcd-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in 0 1 2; do wait_http "http://127.0.0.1:${client_ports[$i]}/health"; done
}

# Writes each of the KEYSPACE keys once (100-byte values, CONNECTIONS connections) into
# TARGET (dcache, redis or etcd) at NODES, so that gets find them and sets overwrite.
# Usage: preload TARGET NODES
preload() {
  "$DCACHE" --nodes "$2" bench --target "$1" -c "$CONNECTIONS" -n 1 --value-size 100 \
    --keyspace "$KEYSPACE" --preload --json >/dev/null 2>&1
}

# Starts a 3-node `dcache local` cluster (release build, default settings) with its
# data under DIR, its API ports from BASE_PORT on (default 0: ports the kernel picks; a
# fixed base lets a killed node restart at the address the cluster knows); appends the
# runner's pid to the array `pids`, waits until it prints its endpoints and sets
# `dcache_nodes` (comma-separated API addresses) and `dcache_node_pids` (the node
# processes, comma-separated). More `dcache local` flags may follow.
# Usage: start_dcache_local DIR [BASE_PORT [FLAGS...]]
start_dcache_local() {
  local dir=$1 base_port=${2:-0}
  shift $(( $# < 2 ? $# : 2 ))
  "$DCACHE" local --nodes 3 --base-port "$base_port" --data-dir "$dir/dcache" "$@" \
    >"$dir/dcache.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do
    grep -q '^export DCACHE_NODES=' "$dir/dcache.log" && break
    sleep 0.1
  done
  dcache_nodes=$(sed -n 's/^export DCACHE_NODES=//p' "$dir/dcache.log")
  [ -n "$dcache_nodes" ] || { cat "$dir/dcache.log" >&2; return 1; }
  dcache_node_pids=$(python3 -c 'import json, sys
print(",".join(str(n["pid"]) for n in json.load(open(sys.argv[1]))["nodes"]))' \
    "$dir/dcache/local-cluster.json")
}
