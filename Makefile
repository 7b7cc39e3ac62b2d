# macie-operator: see README.md. Everything CI checks is `make test`.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

RELEASE_TARGET := x86_64-unknown-linux-musl
RELEASE_BIN := target/$(RELEASE_TARGET)/release/macie-operator
IMAGE ?= macie-operator:dev
# cargo-deny and cargo-cyclonedx (make tools) run as cargo subcommands from here.
TOOLS_PATH := $(CURDIR)/.cache/tools/bin:$(PATH)
SBOM := target/$(RELEASE_TARGET)/release/macie-operator.cdx.json

.PHONY: all tools test fmt-check clippy deny audit crds-check alerts unit harness sim awscli bench-smoke argocd-health leak-check demo crds bench build release release-bin sbom release-check image mutants

all: build

## tools: build or install the pinned control plane (kube-apiserver, etcd), kubectl, helm, aws-cli,
## cargo-deny and cargo-cyclonedx into .cache/
tools:
	hack/tools.sh

build:
	$(CARGO) build --workspace --all-targets --locked

## test: everything CI checks
test: tools fmt-check clippy deny crds-check alerts unit harness awscli bench-smoke argocd-health leak-check release-check
	@echo "make test: all checks passed"

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## deny: the dependency policy (deny.toml): licenses, banned and duplicate crates, sources.
## Offline: Cargo.lock and the local registry are all it reads.
deny:
	@echo "cargo deny --offline --locked --workspace check licenses bans sources"
	@PATH="$(TOOLS_PATH)" $(CARGO) deny --offline --locked --workspace check licenses bans sources

## audit: the RustSec advisories for Cargo.lock (fetches the advisory database: not in make test)
audit:
	@echo "cargo deny --locked --workspace check advisories"
	@PATH="$(TOOLS_PATH)" $(CARGO) deny --locked --workspace check advisories

## unit: every test of every crate but the perturbation harnesses (make harness runs those)
unit:
	$(CARGO) test --workspace --locked -- --skip ::sim::

## harness: the perturbation harnesses (src/job/sim.rs, src/discovery/sim.rs): every injection
## point of their corpus and 10,000 random schedules; prints how many ran and the violations
harness:
	hack/harness.sh

## sim: SIM_SCHEDULES random schedules of the harnesses (default 1,000,000; not in make test);
## SIM_SEED=<seed> replays one schedule exactly. The last line: `sim: <N> schedules, <V> violations`.
sim:
	hack/sim.sh

## alerts: promtool's `check rules` and `test rules` (tests/alerts/) on the rules the chart
## renders, the chart's PrometheusRule and dashboard, and every metric they query against a
## running operator (tests/alerts.rs, which unit runs too: this target names the step)
alerts:
	$(CARGO) test --locked --test alerts

awscli:
	$(CARGO) build --workspace --locked --bin macie-emulator
	tests/awscli.sh target/debug/macie-emulator

## argocd-health: the Argo CD health check against sample objects
argocd-health:
	lua5.4 docs/argocd/health_test.lua

## leak-check: no etcd or kube-apiserver from this checkout may outlive the tests (their guards
## stop them within a few seconds of the test process exiting; wait up to 20 s for that)
leak-check:
	@for i in $$(seq 1 40); do pgrep -f "$(CURDIR)/.cache/controlplane-[v]" >/dev/null || break; sleep 0.5; done
	@if pgrep -fa "$(CURDIR)/.cache/controlplane-[v]" ; then echo "leaked control-plane processes (above)"; exit 1; fi
	@echo "leak-check: no control-plane process left"

## release: the static binary the Dockerfile ships and its SBOM
release: release-bin sbom

## release-bin: the static binary alone (what the Dockerfile runs; --workspace so that make bench
## reuses the same compiled dependencies)
release-bin:
	$(CARGO) build --release --locked --target $(RELEASE_TARGET) --workspace --bin macie-operator

## sbom: the release binary's CycloneDX SBOM, next to it ($(SBOM)): every crate in its build for
## $(RELEASE_TARGET) (build-time ones marked excluded) with version, license, purl and checksum.
## cargo-cyclonedx writes one file per binary of every workspace member beside its Cargo.toml:
## ours is moved, the others removed. Offline: it reads `cargo metadata` only.
SBOM_MEMBERS := . emulator testkit bench
sbom:
	@echo "cargo cyclonedx ... --target $(RELEASE_TARGET) -> $(SBOM)"
	@PATH="$(TOOLS_PATH)" CARGO_NET_OFFLINE=true $(CARGO) cyclonedx --quiet --format json --spec-version 1.5 \
	  --describe binaries --all --target $(RELEASE_TARGET)
	mkdir -p $(dir $(SBOM))
	mv macie-operator_bin.cdx.json $(SBOM)
	rm -f $(addsuffix /*_bin.cdx.json,$(SBOM_MEMBERS))

## release-check: the release binary is static and runs; its SBOM names the operator and every
## crate it depends on
release-check: release
	@file $(RELEASE_BIN) | grep -Eq 'static(-pie)? linked|statically linked' \
	  || { file $(RELEASE_BIN); echo "release binary is not static"; exit 1; }
	$(RELEASE_BIN) --version
	hack/check_sbom.py $(SBOM) $(RELEASE_TARGET)
	@echo "release-check: $(RELEASE_BIN) is static; $(SBOM) describes it"

## image: the container image (needs docker or podman; none runs on the CI machine)
image:
	docker build -t $(IMAGE) .

## demo: the one-command tour; ends by itself with a summary (Ctrl-C or DEMO_EXIT_AFTER=SECONDS
## end it earlier, with the same summary)
demo: tools
	$(CARGO) build --workspace --locked --bins
	hack/demo.sh

## crds: regenerate crds/ from the Rust types
crds:
	$(CARGO) run --locked --quiet --bin macie-operator -- crd > crds/macie.kubeops.dev.yaml
	cp crds/macie.kubeops.dev.yaml charts/macie-operator/crds/macie.kubeops.dev.yaml

## crds-check: the committed CRDs match the Rust types
crds-check:
	@$(CARGO) run --locked --quiet --bin macie-operator -- crd | diff -u crds/macie.kubeops.dev.yaml - \
	  || { echo "crds/ is stale: run 'make crds' and commit the result"; exit 1; }
	@diff -u crds/macie.kubeops.dev.yaml charts/macie-operator/crds/macie.kubeops.dev.yaml \
	  || { echo "the chart's CRDs differ from crds/: run 'make crds'"; exit 1; }
	@echo "crds-check: crds/ matches the types"

## bench: the benchmark (README "Performance"): release builds, then macie-bench starts a local
## control plane, an emulator and the release operator per run; tables on stdout, JSON in
## target/bench/bench.json. BENCH_ARGS passes flags (see `macie-bench --help`; the create run,
## 100 definitions at Macie's 0.1 creates per second, alone takes about 17 minutes: --creates 0
## skips it; the history run, 10,000 jobs of which 100 can change, --history-jobs 0).
BENCH_BIN := target/$(RELEASE_TARGET)/release/macie-bench
bench: tools
	$(CARGO) build --release --locked --target $(RELEASE_TARGET) --workspace --bin macie-operator --bin macie-bench
	$(BENCH_BIN) --operator $(RELEASE_BIN) --out target/bench $(BENCH_ARGS)

## mutants: mutation testing (cargo-mutants) of the decision and step modules, MUTANTS_FILES,
## against the fast layers only: the library's tests (unit, the reconcile-step tests and the
## harness at SIM_SCHEDULES=$(MUTANTS_SIM_SCHEDULES) schedules; --lib in .cargo/mutants.toml), no tests/
## end-to-end test. Results in mutants.out/. cargo-mutants is pinned in hack/versions.env and
## installed into .cache/tools here (make test and make tools do not need it).
## MUTANTS_ARGS is expanded by the recipe's shell and passed on, e.g.
##   make mutants MUTANTS_ARGS="-f 'src/job/*.rs' --sharding round-robin --shard 0/32"
## A -f (--file) in MUTANTS_ARGS replaces MUTANTS_FILES (cargo-mutants would add the two);
## make expands a $ in MUTANTS_ARGS, so a regex anchor is written $$.
## docs/testing.md, "Mutation testing", has the sample and its figures.
## Cost on 2 cores: --in-place mutates and builds this checkout, in its own target/, so a
## mutant costs an incremental build of the library's tests and a link plus the tests (about
## 10 s each here; docs/testing.md has the figures). cargo-mutants' default, a copy of the tree, starts from an empty target/:
## every dependency (AWS SDK, kube, ...) built cold on each run, that is on each shard. So do
## not edit or build this checkout while it runs (a spare worktree with a copy of target/ is
## best); Ctrl-C puts the source back (check with git status).
## One job: a build already uses both cores. --timeout: in place, cargo-mutants cannot scale
## its timeout from the baseline (it would use 300 s); $(MUTANTS_TIMEOUT) s is several times the
## library's whole test run, so a mutant that hangs costs little.
MUTANTS_FILES := src/job/**/*.rs src/discovery/**/*.rs src/account/policy.rs src/runtime/status.rs
MUTANTS_SIM_SCHEDULES ?= 200
MUTANTS_TIMEOUT ?= 60
mutants:
	hack/cargo-tool.sh cargo-mutants
	@args=($(MUTANTS_ARGS)); scope=($(foreach f,$(MUTANTS_FILES),-f '$(f)')); \
	for a in "$${args[@]}"; do case $$a in -f|-f?*|--file|--file=*) scope=() ;; esac; done; \
	export PATH="$(TOOLS_PATH)" SIM_SCHEDULES=$(MUTANTS_SIM_SCHEDULES); set -x; \
	$(CARGO) mutants --in-place \
	  --timeout $(MUTANTS_TIMEOUT) "$${scope[@]}" "$${args[@]}"

## bench-smoke: the benchmark driver end to end at a small size with debug builds (in make test,
## so the benchmark keeps working; its figures mean nothing)
bench-smoke:
	$(CARGO) build --workspace --locked --bins
	target/debug/macie-bench --operator target/debug/macie-operator --out target/bench-smoke \
	  --jobs 20 --accounts 100 --discovery-resources 4 --poll-interval 1s --sweeps 2 \
	  --creates 4 --create-rate 5 --history-jobs 300 --history-managed 10 --confirm-jobs 5 >/dev/null
