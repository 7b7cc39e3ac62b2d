#!/usr/bin/env python3
"""Checks the release binary's SBOM (make release-check): CycloneDX JSON that describes the
macie-operator binary and lists, at the locked version, every crate Cargo resolves into its
build for the release target (from `cargo metadata`, so a dependency added to Cargo.toml and
missing from the SBOM fails this).

Usage: check_sbom.py SBOM.json TARGET
"""

import json
import subprocess
import sys


def fail(message):
    sys.exit("check_sbom: %s: %s" % (sys.argv[1], message))


def runtime_closure(metadata, root_name):
    """(name, version) of every package the root package's library and binary link: normal
    dependencies, transitively (dev-dependencies left out; build dependencies are tools)."""
    by_id = {p["id"]: p for p in metadata["packages"]}
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
    root = next(p["id"] for p in metadata["packages"]
                if p["name"] == root_name and p["id"] in metadata["workspace_members"])
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    seen.discard(root)
    return {(by_id[p]["name"], by_id[p]["version"]) for p in seen}


def main():
    path, target = sys.argv[1], sys.argv[2]
    try:
        bom = json.load(open(path))
    except (OSError, ValueError) as e:
        fail("not readable JSON (%s)" % e)
    if bom.get("bomFormat") != "CycloneDX":
        fail("bomFormat is %r, not CycloneDX" % bom.get("bomFormat"))
    described = bom.get("metadata", {}).get("component", {})
    if described.get("name") != "macie-operator":
        fail("it describes %r, not the macie-operator binary" % described.get("name"))
    listed = {(c.get("name"), c.get("version")) for c in bom.get("components", [])}

    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--offline", "--locked", "--format-version", "1",
         "--filter-platform", target],
        check=True, capture_output=True, text=True).stdout)
    expected = runtime_closure(metadata, "macie-operator")
    missing = sorted(expected - listed)
    if missing:
        fail("%d crate(s) of the binary are not listed: %s" % (
            len(missing), ", ".join("%s %s" % m for m in missing[:20])))
    print("check_sbom: %s: CycloneDX %s for %s %s, %d components, all %d runtime crates listed" % (
        path, bom.get("specVersion"), described.get("name"), described.get("version"),
        len(listed), len(expected)))


if __name__ == "__main__":
    main()
