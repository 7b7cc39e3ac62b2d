#!/usr/bin/env bash
# The one-command tour (`make demo`): a local control plane, macie-emulator seeded from
# examples/, and macie-operator; applies the examples, tells a three-act story (below) and ends
# with one screen that says what happened (hack/demo_summary.py). Ends by itself when the story
# is told; Ctrl-C, or DEMO_EXIT_AFTER seconds when that is set, end it earlier.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=target/debug
kubectl=.cache/tools/bin/kubectl
work=$(mktemp -d)
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "demo: stopping"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

wait_line() { # file, sed pattern, what
  for _ in $(seq 1 600); do
    v=$(sed -n "$2" "$1" 2>/dev/null | head -n1)
    [[ -n $v ]] && { echo "$v"; return 0; }
    sleep 0.2
  done
  echo "demo: timed out waiting for $3; log:" >&2; tail -20 "$1" >&2; return 1
}

echo "demo: starting the local control plane (etcd + kube-apiserver $(.cache/controlplane-*/bin/kube-apiserver --version | cut -d' ' -f2))"
# The control plane stops when its standard input closes, i.e. when this script ends.
coproc CP { exec "$bin/local-control-plane" "$work/kubeconfig" >"$work/cp.log" 2>&1; }
pids+=("$CP_PID")
wait_line "$work/cp.log" 's/^ready \(.*\)$/\1/p' "the API server" >/dev/null
export KUBECONFIG=$work/kubeconfig
$kubectl apply -f crds/ >/dev/null
$kubectl wait --for condition=established --timeout=30s \
  crd/maciejobs.macie.kubeops.dev crd/maciediscoveries.macie.kubeops.dev \
  crd/macieaccounts.macie.kubeops.dev >/dev/null
echo "demo: CRDs installed from crds/"

"$bin/macie-emulator" --seed examples/emulator-seed.yaml --addr 127.0.0.1:0 >"$work/emulator.log" 2>&1 &
pids+=("$!")
url=$(wait_line "$work/emulator.log" 's/^macie-emulator listening on \(http:.*\)$/\1/p' "the emulator")
echo "demo: macie-emulator at $url, seeded from examples/emulator-seed.yaml"

AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL_STS="$url" \
  "$bin/macie-operator" run --region us-east-1 --macie-endpoint "$url" --poll-interval 2s \
  --metrics-addr 127.0.0.1:0 --health-addr 127.0.0.1:0 --log "${DEMO_LOG:-info,kube=warn}" >"$work/operator.log" 2>&1 &
pids+=("$!")
echo "demo: macie-operator running (poll interval 2s; log: $work/operator.log)"
$kubectl apply -f examples/macieaccounts.yaml
$kubectl apply -f examples/maciejobs.yaml -f examples/maciediscovery.yaml
echo

# The tour, in three acts, each started when the previous one is seen done (waited for on the
# resources' status, not on time): the examples converge; someone resumes nightly-pii-scan in
# the console and the operator pauses it again; the job not-created-yet appears in Macie and is
# picked up. Tables are printed only when they changed (the AGE column is left out, it always
# does). Then one last screen says what was declared, what Macie shows and every call made, and
# why. Ctrl-C or DEMO_EXIT_AFTER (seconds) ends it early, with the same last screen.
echo
echo "demo: the tour: (1) the examples converge; (2) someone resumes nightly-pii-scan in the"
echo "      console and the operator puts it back; (3) the job not-created-yet appears in Macie."
echo "      Tables below are printed when something changes."

without_age() { # a kubectl table on stdin, without its AGE column
  awk '/^NAME / { s = index($0, " AGE"); rest = substr($0, s + 4); e = match(rest, /[^ ]/) ? s + 3 + RSTART : 0 }
       { if (!s) print; else if (!e) { l = substr($0, 1, s); sub(/ +$/, "", l); print l } else print substr($0, 1, s) substr($0, e) }'
}
tables() {
  local kind
  for kind in macieaccounts maciejobs maciediscoveries; do
    $kubectl get "$kind" -o wide 2>/dev/null | without_age
    echo
  done
}
field() { # kind/name jsonpath
  $kubectl get "$1" -o "jsonpath=$2" 2>/dev/null || true
}
ready() { # kind/name
  [[ $(field "$1" '{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

stop=
trap 'stop=1' INT TERM
start=$(date +%s)
deadline=$(( start + ${DEMO_EXIT_AFTER:-180} ))
act=1 last= quiet_since=$start
ended="the tour is over"
while :; do
  now=$(date +%s)
  [[ -n $stop ]] && { ended="stopped (Ctrl-C)"; break; }
  if (( now >= deadline )); then
    if [[ -n ${DEMO_EXIT_AFTER:-} ]]; then ended="stopped after DEMO_EXIT_AFTER=${DEMO_EXIT_AFTER}s (act $act of 3)"
    else ended="the tour did not finish within 180 s (act $act of 3): see $work/operator.log"; fi
    break
  fi
  current=$(tables)
  if [[ $current != "$last" ]]; then
    echo "--- $(date +%T) (+$((now - start))s)"
    printf '%s\n' "$current"
    last=$current quiet_since=$now
  fi
  case $act in
    1) # the examples converged: nightly-pii-scan is paused as declared
      if [[ $(field mj/nightly-pii-scan '{.status.job.jobStatus}') == USER_PAUSED ]] && ready mj/nightly-pii-scan; then
        echo "demo: (2) someone resumes nightly-pii-scan in the console (out-of-band drift)..."
        before=$(field mj/nightly-pii-scan '{.status.lastTransition.requestedAt}')
        curl -fsS -X PUT "$url/__admin/jobs/3ce7a5e1c0b54d7e9a1f2b3c4d5e6f70/status" \
          -H 'content-type: application/json' -d '{"jobStatus":"RUNNING"}' >/dev/null
        act=2
      fi ;;
    2) # a new pause was asked for, and a sweep shows the job paused again
      if [[ $(field mj/nightly-pii-scan '{.status.lastTransition.requestedAt}') != "$before" ]] \
        && [[ $(field mj/nightly-pii-scan '{.status.job.jobStatus}') == USER_PAUSED ]]; then
        echo "demo: (3) the job not-created-yet appears in Macie..."
        curl -fsS -X POST "$url/__admin/jobs" -H 'content-type: application/json' \
          -d '{"jobId":"ffffffffffffffffffffffffffffffff","name":"not-created-yet","jobType":"ONE_TIME","jobStatus":"RUNNING"}' >/dev/null
        act=3
      fi ;;
    3) # picked up; the tour ends once the tables have been still for a few seconds
      if ready mj/not-created-yet && (( now - quiet_since >= 4 )); then break; fi ;;
  esac
  sleep 1
done
trap 'exit 0' INT TERM
echo
echo "demo: $ended"
$kubectl get macieaccounts,maciejobs,maciediscoveries -o json >"$work/resources.json"
python3 hack/demo_summary.py "$work/resources.json" "$url"
[[ $ended != *"did not finish"* ]]
