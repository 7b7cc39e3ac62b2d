#!/usr/bin/env bash
# The perturbation harnesses (src/job/sim.rs, src/discovery/sim.rs): every injection point of
# their corpus and SIM_SCHEDULES random schedules (10,000 unless set; SIM_SEED=<seed> replays
# one). Prints the harnesses' `sim:` lines; on a failure, the failing seed and schedule.
set -euo pipefail
log=target/harness.log
mkdir -p target
status=0
cargo test --locked --lib ::sim:: -- --nocapture --test-threads 2 >"$log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
  grep -E '^(sim:|seed |scenario |.*failed; first)' "$log" | cut -c1-2000 || tail -50 "$log"
  echo "harness: FAILED (full output in $log)"
  exit "$status"
fi
grep -E '^sim:' "$log"
