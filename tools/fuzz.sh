#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and reports how many inputs
# each executed. Usage: tools/fuzz.sh [seconds per target] [target...]
#
# cargo-fuzz needs the nightly compiler's -Z flags (sanitizers, coverage counters);
# this machine has one stable toolchain, so RUSTC_BOOTSTRAP=1 unlocks them on it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(http_request raft_rpc snapshot resp_request resp_connection http_connection)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

export RUSTC_BOOTSTRAP=1
corpus=target/fuzz-corpus
cargo run --quiet --locked -p dcache-node --example fuzz_seeds -- "$corpus"

report=target/fuzz-report.txt
: > "$report"
status=0
for target in "${targets[@]}"; do
    log="target/fuzz-$target.log"
    echo "fuzzing $target for ${seconds}s (log: $log)"
    # Regressions are replayed first as extra corpus; new inputs go to the working corpus.
    mkdir -p "fuzz/regressions/$target"
    if (cd fuzz && cargo fuzz run --release "$target" "../$corpus/$target" "regressions/$target" \
            -- -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048) >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log and fuzz/artifacts/$target/; keep the input under fuzz/regressions/$target/)"
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    line="$target: ${runs:-?} executions in ${seconds}s, coverage ${cov:-?} edges, $result"
    echo "$line" | tee -a "$report"
done
echo "report: $report"
exit $status
