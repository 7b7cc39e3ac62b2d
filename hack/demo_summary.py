#!/usr/bin/env python3
"""The last screen of `make demo`: what was declared, what Macie shows, every call made and why.

Usage: demo_summary.py RESOURCES.json EMULATOR_URL
  RESOURCES.json: `kubectl get macieaccounts,maciejobs,maciediscoveries -o json`
  EMULATOR_URL:   the macie-emulator the operator talked to (its /__admin API is read here)

The reading and the printing are apart: `why` and `read_reason` decide, `main` fetches and prints.
"""

import json
import sys
import urllib.request

# What each read is for (the writes are explained one by one, by the resource that asked).
READ_REASONS = {
    "ListClassificationJobs": "the job sweep: one listing (all pages) per AWS account and region "
    "per poll interval observes every MacieJob's job at once",
    "DescribeClassificationJob": "once per job that left the sweep (completed or cancelled) or "
    "that a MacieJob names by id and no sweep shows",
    "ListAutomatedDiscoveryAccounts": "MacieDiscovery: the member accounts' current statuses",
    "GetAutomatedDiscoveryConfiguration": "MacieDiscovery: whether automated discovery is on",
    "GetCallerIdentity": "MacieAccount: which AWS account its credentials are",
}


def condition(obj, kind="Ready"):
    for c in obj.get("status", {}).get("conditions", []):
        if c.get("type") == kind:
            return c
    return {}


def verdict(obj):
    """`Ready Converged` or `Stalled AccessDenied: message`: the condition that is True."""
    for kind in ("Ready", "Stalled", "Reconciling"):
        c = condition(obj, kind)
        if c.get("status") == "True":
            text = "%s %s" % (kind, c.get("reason", ""))
            if kind != "Ready" and c.get("message"):
                text += ": " + c["message"]
            return text
    return "(no condition yet)"


def why(call, resources):
    """The resource(s) that asked for a write call, as text."""
    op = call["operation"]
    jobs = [r for r in resources if r["kind"] == "MacieJob"]
    if op == "UpdateClassificationJob":
        names = [
            "MacieJob %s declares %s" % (r["metadata"]["name"], r["spec"]["jobStatus"])
            for r in jobs
            if r.get("status", {}).get("job", {}).get("jobId") == call.get("jobId")
            and r["spec"]["jobStatus"] == call.get("requestedStatus")
        ]
    elif op == "CreateClassificationJob":
        names = [
            "MacieJob %s has a definition and no job of that name exists" % r["metadata"]["name"]
            for r in jobs
            if r["spec"].get("definition") and r["spec"].get("jobName") == call.get("name")
        ]
    elif op == "BatchUpdateAutomatedDiscoveryAccounts":
        sent = {a["accountId"] for a in call.get("accounts", [])}
        names = [
            "MacieDiscovery %s declares %s" % (r["metadata"]["name"], ", ".join(
                "%s=%s" % (a["accountId"], a["status"]) for a in r["spec"]["accounts"]
                if a["accountId"] in sent))
            for r in resources
            if r["kind"] == "MacieDiscovery"
            and sent & {a["accountId"] for a in r["spec"]["accounts"]}
        ]
    elif op == "AssumeRole":
        names = [
            "MacieAccount %s acts through this role" % r["metadata"]["name"]
            for r in resources
            if r["kind"] == "MacieAccount" and r["spec"].get("roleArn") == call.get("roleArn")
        ]
    else:
        names = []
    return "; ".join(names) or "no resource asks for it now (the declaration changed since)"


def read_reason(operation):
    return READ_REASONS.get(operation, "")


def describe_call(call):
    op, acct = call["operation"], call.get("awsAccountId", "?")
    if op == "UpdateClassificationJob":
        what = "%s %s -> %s" % (call.get("jobId"), call.get("fromStatus"), call.get("requestedStatus"))
    elif op == "CreateClassificationJob":
        what = "%s (created %s)" % (call.get("name"), call.get("jobId") or "nothing")
    elif op == "AssumeRole":
        what = "%s" % call.get("roleArn")
    else:
        what = ", ".join("%s=%s %s" % (a["accountId"], a["status"], a["outcome"])
                         for a in call.get("accounts", []))
    return "%s in %s: %s: %s" % (op, acct, what, call["outcome"])


def admin(url, path):
    with urllib.request.urlopen(url + path, timeout=10) as r:
        return json.load(r)


def declared(r):
    spec, name, kind = r["spec"], r["metadata"]["name"], r["kind"]
    if kind == "MacieAccount":
        how = "role " + spec["roleArn"] if spec.get("roleArn") else "the operator's own credentials"
        rules = spec.get("jobs", {})
        return "MacieAccount %-16s %s, regions %s; jobs named %s%s%s" % (
            name, how, ",".join(spec.get("regions", [])), ",".join(rules.get("names", [])),
            ", may cancel" if rules.get("allowCancel") else ", may not cancel",
            ", may create" if rules.get("allowCreate") else "")
    if kind == "MacieJob":
        job = "jobId " + spec["jobId"] if spec.get("jobId") else "jobName " + spec.get("jobName", "?")
        extra = " (creates it from spec.definition)" if spec.get("definition") else ""
        acct = spec.get("accountRef", {}).get("name", "default")
        return "MacieJob %-20s %s in account %s: %s%s" % (name, job, acct, spec["jobStatus"], extra)
    return "MacieDiscovery %s: %s" % (
        name, ", ".join("%s=%s" % (a["accountId"], a["status"]) for a in spec["accounts"]))


def main():
    resources = json.load(open(sys.argv[1]))["items"]
    url = sys.argv[2]
    calls = admin(url, "/__admin/calls")["calls"]
    counters = admin(url, "/__admin/counters")
    order = {"MacieAccount": 0, "MacieJob": 1, "MacieDiscovery": 2}
    resources.sort(key=lambda r: (order[r["kind"]], r["metadata"]["name"]))

    print("=" * 100)
    print("WHAT WAS DECLARED (the examples/ manifests) and what the operator reports")
    for r in resources:
        print("  " + declared(r))
        print("      -> " + verdict(r))
        for a in r.get("status", {}).get("accounts", []) if r["kind"] == "MacieDiscovery" else []:
            print("         %s desired %s, Macie shows %s %s" % (
                a["accountId"], a["desired"], a.get("observed", "nothing"), a.get("errorCode", "")))

    print()
    print("WHAT MACIE SHOWS (macie-emulator)")
    accounts = [None] + sorted({c["awsAccountId"] for c in calls if c["operation"] != "AssumeRole"}
                               | {r["spec"]["roleArn"].split(":")[4] for r in resources
                                  if r["kind"] == "MacieAccount" and r["spec"].get("roleArn")})
    seen = set()
    for acct in accounts:
        state = admin(url, "/__admin/state" + ("?account=%s" % acct if acct else ""))
        if state["awsAccountId"] in seen:
            continue
        seen.add(state["awsAccountId"])
        print("  AWS account %s, %s:" % (state["awsAccountId"], state["region"]))
        for j in sorted(state["jobs"], key=lambda j: j["name"]):
            print("    job %-22s %-12s %s" % (j["name"], j["jobStatus"], j["jobId"]))
        if state.get("accounts"):
            print("    automated discovery: " + ", ".join(
                "%s=%s" % (i, a.get("visibleStatus", a.get("status"))) for i, a in sorted(state["accounts"].items())))

    print()
    print("EVERY CALL THE OPERATOR MADE, AND WHY")
    print("  Writes, in order (each one is also an Event on the resource):")
    for c in calls:
        print("    %s" % describe_call(c))
        print("        why: %s" % why(c, resources))
    if not calls:
        print("    none")
    print("  Reads (counted; they change nothing):")
    writes = {c["operation"] for c in calls} | {"UpdateClassificationJob", "CreateClassificationJob",
                                                  "BatchUpdateAutomatedDiscoveryAccounts", "AssumeRole"}
    for op, n in sorted(counters.items()):
        if op in writes:
            continue
        errors = ", ".join("%d %s" % (k, e) for e, k in sorted(n.get("errors", {}).items()))
        print("    %-36s %4d OK%s" % (op, n.get("ok", 0), " (" + errors + ")" if errors else ""))
        if read_reason(op):
            print("        why: %s" % read_reason(op))
    refused = [r for r in resources
               if condition(r, "Stalled").get("status") == "True" and
               condition(r, "Stalled").get("reason") in ("NotPermitted", "RegionNotAllowed", "AccountNotFound")]
    if refused:
        print("  Refused before any call (the MacieAccount's rules forbid it):")
        for r in refused:
            print("    %s %s: %s" % (r["kind"], r["metadata"]["name"], condition(r, "Stalled").get("message", "")))
    print("=" * 100)


if __name__ == "__main__":
    main()
