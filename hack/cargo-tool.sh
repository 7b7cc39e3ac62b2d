#!/usr/bin/env bash
# Installs cargo subcommands into .cache/tools/bin at the versions hack/versions.env pins
# (CRATE_NAME_VERSION: cargo-deny -> CARGO_DENY_VERSION), each built from crates.io with its own
# Cargo.lock (cargo install --locked). Skipped when the pinned version is there, so a second
# run is quick. Used by hack/tools.sh (cargo-deny, cargo-cyclonedx) and by make mutants
# (cargo-mutants, which make test does not need).
#   hack/cargo-tool.sh CRATE...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$root/hack/versions.env"
cache="$root/.cache"
tools_bin="$cache/tools/bin"
mkdir -p "$tools_bin"

for crate in "$@"; do
  var=$(echo "$crate" | tr 'a-z-' 'A-Z_')_VERSION
  version=${!var:?"hack/versions.env pins no $var"}
  # Run as cargo runs it (`cargo-deny deny --version`): cargo-cyclonedx answers only that way.
  if [[ -x $tools_bin/$crate ]] && "$tools_bin/$crate" "${crate#cargo-}" --version 2>/dev/null | grep -F -- " $version" >/dev/null; then
    echo "tools: $crate $version present"
  else
    echo "tools: building $crate $version (cargo install --locked)"
    start=$SECONDS
    cargo install --quiet --locked --force --version "=$version" "$crate" --root "$cache/tools"
    echo "tools: $crate $version built in $((SECONDS - start)) s"
  fi
done
