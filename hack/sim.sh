#!/usr/bin/env bash
# make sim: SIM_SCHEDULES random schedules of each perturbation harness (default 1,000,000),
# or SIM_SEED=<seed> to replay one schedule exactly (SIM_TRACE=1 prints every operation and
# reconcile). The last line: `sim: <N> schedules, <V> violations`.
set -uo pipefail
export SIM_SCHEDULES="${SIM_SCHEDULES:-1000000}"
log=target/sim.log
mkdir -p target
cargo test --locked --lib ::sim::random_schedules -- --nocapture >"$log" 2>&1
status=$?
grep -E '^(sim:|seed |scenario |op |  reconcile)' "$log" | cut -c1-2000
# Each harness's line: `sim: <N> schedules, <V> violations, <elapsed>` (run at the same time).
grep -E '^sim: [0-9]+ schedules' "$log" | awk -v status="$status" '
  {
    n += $2; v += $4; t = $6
    secs = (t ~ /ms$/) ? t / 1000 : ((t ~ /µs$/) ? t / 1e6 : t + 0)
    if (secs > wall) wall = secs
  }
  END {
    if (n == 0) { print "sim: no schedule ran (see target/sim.log)"; exit 1 }
    printf "sim: %d schedules in %.1f s (%.0f per second, test build)\n", n, wall, n / (wall > 0 ? wall : 1)
    printf "sim: %d schedules, %d violations\n", n, v
    exit (v > 0 || status != 0)
  }'
