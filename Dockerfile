# syntax=docker/dockerfile:1
# macie-operator container image: a static (musl) binary on a distroless, non-root base with no
# shell. Build: `make image` (needs a container engine). The binary is built with the same
# command `make test` runs on every CI pass: `make release`.

FROM docker.io/library/rust:1.95-bookworm AS build
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
RUN touch src/main.rs src/lib.rs && make release

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/macie-operator /macie-operator
USER 65532:65532
# metrics (HTTPS with --metrics-secure), health probes
EXPOSE 8080 8081
ENTRYPOINT ["/macie-operator"]
CMD ["run"]
