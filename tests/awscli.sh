#!/usr/bin/env bash
# Checks macie-emulator with an independent client: the AWS CLI (botocore parses every response
# against the official macie2 service model). Run by `make test` after `make tools`.
#   tests/awscli.sh path/to/macie-emulator
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
emulator=${1:-$root/target/debug/macie-emulator}
aws=${AWS_CLI:-$root/.cache/tools/awscli/bin/aws}
log=$(mktemp)
"$emulator" --seed "$root/examples/emulator-seed.yaml" --addr 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
url=
for _ in $(seq 1 100); do
  url=$(sed -n 's/^macie-emulator listening on \(http:.*\)$/\1/p' "$log")
  [[ -n $url ]] && break
  sleep 0.1
done
[[ -n $url ]] || { echo "emulator did not start:"; cat "$log"; exit 1; }

export AWS_ACCESS_KEY_ID=AKIDEMULATOR AWS_SECRET_ACCESS_KEY=secret AWS_DEFAULT_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=2
mac() { "$aws" macie2 --endpoint-url "$url" --output json "$@"; }
passed=0 failed=0
check() { # name, command producing output, expected substring
  local name=$1 want=$2 out; shift 2
  if out=$("$@" 2>&1) && grep -qF -- "$want" <<<"$out"; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name: wanted '$want' in:"; echo "$out" | head -20
  fi
}
check_error() { # name, expected error text, command (which must fail)
  local name=$1 want=$2 out; shift 2
  if out=$("$@" 2>&1); then
    failed=$((failed + 1)); echo "FAIL $name: command succeeded: $out"
  elif grep -qF -- "$want" <<<"$out"; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name: wanted '$want' in:"; echo "$out" | head -20
  fi
}

check "list jobs (all pages)" '"name": "nightly-pii-scan"' mac list-classification-jobs
check "list jobs: filter by status" '"jobStatus": "COMPLETE"' mac list-classification-jobs \
  --filter-criteria '{"includes":[{"comparator":"EQ","key":"jobStatus","values":["COMPLETE"]}]}'
check "list jobs: paginated by the CLI" '"jobId": "1b2c3d4e5f6a47b8c9d0e1f2a3b4c5d6"' mac list-classification-jobs --page-size 2
check "describe job" '"jobExpiresAt"' mac describe-classification-job --job-id 5e4d3c2b1a0f49e8d7c6b5a4f3e2d1c0
check "pause a running job" '' mac update-classification-job --job-id 7d1f2e3a4b5c46d7e8f9a0b1c2d3e4f5 --job-status USER_PAUSED
check "paused job shows userPausedDetails" '"jobPausedAt"' mac describe-classification-job --job-id 7d1f2e3a4b5c46d7e8f9a0b1c2d3e4f5
check "resume a job paused while idle returns to IDLE" '"IDLE"' bash -c \
  "$(declare -f mac); aws=$aws url=$url; mac update-classification-job --job-id 5e4d3c2b1a0f49e8d7c6b5a4f3e2d1c0 --job-status RUNNING && mac describe-classification-job --job-id 5e4d3c2b1a0f49e8d7c6b5a4f3e2d1c0 --query jobStatus"
check_error "invalid transition is a typed ValidationException" \
  "An error occurred (ValidationException) when calling the UpdateClassificationJob operation: cannot update completed job" \
  mac update-classification-job --job-id 0a9b8c7d6e5f44a3b2c1d0e9f8a7b6c5 --job-status CANCELLED
check_error "cancelled job cannot be resumed" "(ValidationException)" \
  mac update-classification-job --job-id 1b2c3d4e5f6a47b8c9d0e1f2a3b4c5d6 --job-status RUNNING
check_error "unknown job is ResourceNotFoundException" "(ResourceNotFoundException)" \
  mac describe-classification-job --job-id does-not-exist
create_args=(create-classification-job --client-token cli-token-1 --job-type SCHEDULED --name cli-job
  --description "made by the AWS CLI" --initial-run --sampling-percentage 50
  --schedule-frequency '{"weeklySchedule":{"dayOfWeek":"MONDAY"}}'
  --s3-job-definition '{"bucketDefinitions":[{"accountId":"111111111111","buckets":["cli-bucket"]}]}'
  --tags team=sec)
created=$(mac "${create_args[@]}" 2>&1) || true
cli_job=$(sed -n 's/.*"jobId": "\([0-9a-f]*\)".*/\1/p' <<<"$created")
check "create job with a client token" '"jobArn": "arn:aws:macie2:us-east-1:123456789012:classification-job/' echo "$created"
check "a repeated client token returns the same job" "\"jobId\": \"${cli_job:-none}\"" mac "${create_args[@]}"
tab=$'\t'
check "describe returns the definition and the client token" \
  "cli-token-1${tab}cli-job${tab}made by the AWS CLI${tab}SCHEDULED${tab}True${tab}50${tab}MONDAY${tab}111111111111${tab}cli-bucket${tab}sec" \
  mac describe-classification-job --job-id "${cli_job:-none}" --output text --query \
  '[clientToken,name,description,jobType,initialRun,samplingPercentage,scheduleFrequency.weeklySchedule.dayOfWeek,s3JobDefinition.bucketDefinitions[0].accountId,s3JobDefinition.bucketDefinitions[0].buckets[0],tags.team]'
check_error "create with a bad bucket name is a ValidationException naming the field" \
  "An error occurred (ValidationException) when calling the CreateClassificationJob operation: s3JobDefinition.bucketDefinitions[0].buckets[0]:" \
  mac create-classification-job --job-type ONE_TIME --name bad-bucket \
  --s3-job-definition '{"bucketDefinitions":[{"accountId":"111111111111","buckets":["Bad_Bucket"]}]}'
check_error "a scheduled job needs a schedule" "(ValidationException) when calling the CreateClassificationJob operation: scheduleFrequency:" \
  mac create-classification-job --job-type SCHEDULED --name no-schedule \
  --s3-job-definition '{"bucketDefinitions":[{"accountId":"111111111111","buckets":["cli-bucket"]}]}'
curl -fsS -X PUT "$url/__admin/quotas" -H 'content-type: application/json' -d '{"createClassificationJobPerSecond":0}'
check_error "past the create quota is a ThrottlingException" "(ThrottlingException) when calling the CreateClassificationJob operation" \
  mac create-classification-job --job-type ONE_TIME --name throttled \
  --s3-job-definition '{"bucketDefinitions":[{"accountId":"111111111111","buckets":["cli-bucket"]}]}'
curl -fsS -X PUT "$url/__admin/quotas" -H 'content-type: application/json' -d '{"createClassificationJobPerSecond":null}'
check "list discovery accounts" '"accountId": "444444444444"' mac list-automated-discovery-accounts
check "list discovery accounts by id" '"status": "DISABLED"' mac list-automated-discovery-accounts --account-ids 222222222222 333333333333
check_error "more than 25 per page is a ValidationException" "(ValidationException)" \
  mac list-automated-discovery-accounts --max-results 26
check "batch update reports per-account errors" '"errorCode": "ACCOUNT_PAUSED"' mac batch-update-automated-discovery-accounts \
  --accounts accountId=222222222222,status=ENABLED accountId=444444444444,status=DISABLED accountId=999999999999,status=ENABLED
check "batch update took effect" '"status": "ENABLED"' mac list-automated-discovery-accounts --account-ids 222222222222
check "automated discovery configuration" '"autoEnableOrganizationMembers": "NONE"' mac get-automated-discovery-configuration

# STS (query protocol, same address): the CLI parses the XML against the official sts model.
sts() { "$aws" sts --endpoint-url "$url" --output json "$@"; }
role=arn:aws:iam::111122223333:role/macie-operator
check "sts get-caller-identity names the default account" '"Account": "123456789012"' sts get-caller-identity
check "sts assume-role of a seeded role" '"Arn": "arn:aws:sts::111122223333:assumed-role/macie-operator/cli"' \
  sts assume-role --role-arn "$role" --role-session-name cli --external-id macie-demo
check_error "sts assume-role with a wrong external id is AccessDenied" "(AccessDenied)" \
  sts assume-role --role-arn "$role" --role-session-name cli --external-id wrong-id
as_role() { # runs the rest of the line with credentials of the seeded role
  local c; c=$(sts assume-role --role-arn "$role" --role-session-name cli --external-id macie-demo \
    --query 'Credentials.[AccessKeyId,SecretAccessKey,SessionToken]' --output text) || return 1
  read -r AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN <<<"$c"
  AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN=$AWS_SESSION_TOKEN "$@"
}
check "assumed credentials: get-caller-identity names the role account" '"Account": "111122223333"' as_role sts get-caller-identity
check "assumed credentials: Macie shows the role account's jobs" '"name": "prod-account-scan"' as_role mac list-classification-jobs
check_error "expired credentials are refused" "(ExpiredTokenException)" \
  bash -c "$(declare -f mac sts); aws=$aws url=$url role=$role; c=\$(sts assume-role --role-arn \$role --role-session-name cli --external-id macie-demo --query 'Credentials.[AccessKeyId,SecretAccessKey,SessionToken]' --output text); curl -fsS -X POST $url/__admin/clock/advance -H 'content-type: application/json' -d '{\"seconds\":3601}' >/dev/null; read -r k s t <<<\"\$c\"; AWS_ACCESS_KEY_ID=\$k AWS_SECRET_ACCESS_KEY=\$s AWS_SESSION_TOKEN=\$t mac list-classification-jobs"

curl -fsS -X PUT "$url/__admin/faults" -H 'content-type: application/json' \
  -d '{"operations":{"ListClassificationJobs":{"throttleRate":1.0}}}'
check_error "throttling is a typed ThrottlingException" "(ThrottlingException)" \
  "$aws" macie2 --endpoint-url "$url" --cli-read-timeout 5 list-classification-jobs
curl -fsS -X DELETE "$url/__admin/faults"
curl -fsS -X PUT "$url/__admin/macie" -H 'content-type: application/json' -d '{"enabled":false}'
check_error "Macie not enabled is AccessDeniedException" "(AccessDeniedException)" mac list-classification-jobs

echo "aws-cli: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
