#!/usr/bin/env bash
# The one-command tour (`make demo`): a local control plane, macie-emulator seeded from
# examples/, and macie-operator; applies the example MacieJobs and prints them as they converge.
# Stops on Ctrl-C, or by itself after DEMO_EXIT_AFTER seconds when that is set.
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

show() {
  echo "--- $(date +%T)"
  $kubectl get macieaccounts -o wide
  $kubectl get maciejobs -o wide
  $kubectl get maciediscoveries -o wide
}
deadline=$(( $(date +%s) + ${DEMO_EXIT_AFTER:-1000000000} ))
step=0
while (( $(date +%s) < deadline )); do
  show
  step=$((step + 1))
  if (( step == 5 )); then
    echo
    echo "demo: someone resumes nightly-pii-scan in the console (out-of-band drift)..."
    curl -fsS -X PUT "$url/__admin/jobs/3ce7a5e1c0b54d7e9a1f2b3c4d5e6f70/status" \
      -H 'content-type: application/json' -d '{"jobStatus":"RUNNING"}'
  fi
  if (( step == 9 )); then
    echo
    echo "demo: the job not-created-yet appears in Macie..."
    curl -fsS -X POST "$url/__admin/jobs" -H 'content-type: application/json' \
      -d '{"jobId":"ffffffffffffffffffffffffffffffff","name":"not-created-yet","jobType":"ONE_TIME","jobStatus":"RUNNING"}' >/dev/null
  fi
  sleep 2
done
echo
echo "demo: conditions of nightly-pii-scan:"
$kubectl get maciejob nightly-pii-scan -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
echo "demo: accounts of MacieDiscovery security-team:"
$kubectl get maciediscovery security-team \
  -o jsonpath='{range .status.accounts[*]}{"  "}{.accountId}{"  desired="}{.desired}{"  observed="}{.observed}{"  "}{.errorCode}{"\n"}{end}'
echo "demo: Events:"
$kubectl get events --sort-by=.lastTimestamp -o custom-columns=OBJECT:.involvedObject.name,TYPE:.type,REASON:.reason,MESSAGE:.message | tail -15
echo "demo: calls the emulator saw:"
curl -fsS "$url/__admin/calls" | python3 -c 'import json, sys
for c in json.load(sys.stdin)["calls"]:
    who = "account %s" % c.get("awsAccountId")
    if c["operation"] == "UpdateClassificationJob":
        print("  %s UpdateClassificationJob %s: %s -> %s: %s" % (who, c["jobId"], c.get("fromStatus"), c.get("requestedStatus"), c["outcome"]))
    elif c["operation"] == "CreateClassificationJob":
        print("  %s CreateClassificationJob %s -> %s: %s" % (who, c.get("name"), c.get("jobId"), c["outcome"]))
    elif c["operation"] == "AssumeRole":
        print("  %s AssumeRole %s (session %s): %s" % (who, c.get("roleArn"), c.get("roleSessionName"), c["outcome"]))
    else:
        print("  %s %s: %s" % (who, c["operation"], ", ".join("%s=%s %s" % (a["accountId"], a["status"], a["outcome"]) for a in c.get("accounts", []))))'
