#!/usr/bin/env bash
# What an idle cluster costs: a 3-node release `dcache local` cluster (64 partitions,
# R=3, default heartbeat) left alone; each node's CPU time (user + system, from
# /proc/PID/stat) over SECONDS, as a share of one core. Appends to bench/results/idle.md
# (or OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

DCACHE=${DCACHE:-target/release/dcache}
SETTLE=${SETTLE:-15}
MEASURE=${MEASURE:-30}
OUT=${OUT:-bench/results/idle.md}
use_workdir /dev/shm/dcache-idle.XXXXXX

start_dcache_local "$work"
node_pids=${dcache_node_pids//,/ }
sleep "$SETTLE"

ticks() {  # utime + stime of PID, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
declare -A before
for pid in $node_pids; do before[$pid]=$(ticks "$pid"); done
sleep "$MEASURE"
hz=$(getconf CLK_TCK)
line="| $(date -u +%Y-%m-%d) | $(git rev-parse --short HEAD 2>/dev/null || echo -) |"
for pid in $node_pids; do
  used=$(( $(ticks "$pid") - before[$pid] ))
  share=$(python3 -c "print(f'{100 * $used / $hz / $MEASURE:.1f}%')")
  line+=" $share |"
done
if [ ! -f "$OUT" ]; then
  {
    echo "Idle CPU of each node of a 3-node release \`dcache local\` cluster (64 partitions,"
    echo "R=3, 150 ms heartbeat), as a share of one core, over ${MEASURE}s after ${SETTLE}s"
    echo "to settle (\`bash bench/idle.sh\`)."
    echo
    echo "| date | commit | node 0 | node 1 | node 2 |"
    echo "| --- | --- | ---: | ---: | ---: |"
  } >"$OUT"
fi
echo "$line" >>"$OUT"
echo "$line"
