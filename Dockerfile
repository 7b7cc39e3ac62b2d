# macie-operator container image: a static (musl) binary on a distroless, non-root base with no
# shell. Build: `make image` (needs a container engine). The binary is built with the same
# command `make test` runs on every CI pass: `make release-bin` (`make release` is that plus
# the SBOM, whose tool is not in this image).
#
# Base images are pinned by digest (the tag in the comment is what the digest was taken for):
# a rebuilt tag cannot change what this file builds. To update, resolve the tag again, e.g.
# `docker buildx imagetools inspect rust:1.95-bookworm`, and replace the digest. No `# syntax=`
# line: the engine's built-in Dockerfile frontend reads this file, so no unpinned frontend image
# is pulled either.

# rust:1.95-bookworm
FROM docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, for layer caching.
COPY Cargo.toml Cargo.lock rustfmt.toml Makefile ./
COPY emulator/Cargo.toml emulator/Cargo.toml
COPY testkit/Cargo.toml testkit/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src emulator/src testkit/src/bin bench/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > emulator/src/main.rs && touch emulator/src/lib.rs \
 && touch testkit/src/lib.rs && echo 'fn main() {}' > testkit/src/bin/local-control-plane.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && cargo fetch --locked
COPY . .
RUN touch src/main.rs src/lib.rs && make release-bin

# gcr.io/distroless/static-debian12:nonroot
FROM gcr.io/distroless/static-debian12:nonroot@sha256:b7bb25d9f7c31d2bdd1982feb4dafcaf137703c7075dbe2febb41c24212b946f
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/macie-operator /macie-operator
USER 65532:65532
# metrics (HTTPS with --metrics-secure), health probes
EXPOSE 8080 8081
ENTRYPOINT ["/macie-operator"]
CMD ["run"]
