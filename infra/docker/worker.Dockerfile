# syntax=docker/dockerfile:1.7
# coderun-worker for the Kubernetes executor (worker.executor = "kubernetes"): a small non-root
# image without a shell. It carries no bubblewrap, so the local executor cannot run in it: the
# worker refuses to start with executor "local" here, by design.
#
#   docker build -f infra/docker/worker.Dockerfile -t coderun/worker:0.1.0 .
#
# Build context: the repository root (worker.Dockerfile.dockerignore keeps it small).

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Same cache ids as functions.Dockerfile: building both images compiles the shared crates once.
RUN --mount=type=cache,id=coderun-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=coderun-target,target=/src/target \
    cargo build --release --locked --bin coderun-worker \
    && install -D -m 0755 target/release/coderun-worker /out/coderun-worker

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/coderun-worker /usr/local/bin/coderun-worker
ENV CODERUN__WORKER__EXECUTOR=kubernetes \
    CODERUN__LOG__FORMAT=json
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/coderun-worker"]
