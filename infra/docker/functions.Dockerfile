# syntax=docker/dockerfile:1.7
# coderun-functions, the HTTP API with the web app it serves at /, as a small non-root image
# without a shell.
#
#   docker build -f infra/docker/functions.Dockerfile -t coderun/functions:0.1.0 .
#
# Build context: the repository root (functions.Dockerfile.dockerignore keeps it small).
# The builder matches the workspace's rust-version (1.89); override with --build-arg.

ARG RUST_VERSION=1.89
ARG NODE_VERSION=20

# The web app: web/ → web/dist (index.html + content-hashed assets/).
FROM node:${NODE_VERSION}-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN --mount=type=cache,id=coderun-npm,target=/root/.npm \
    npm ci --prefer-offline --no-audit --no-fund
COPY web/ ./
RUN npm run build

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cargo registry and target folders are BuildKit caches, so a rebuild (and the worker image
# built after this one) recompiles only what changed; the binary is copied out of the cache.
RUN --mount=type=cache,id=coderun-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=coderun-target,target=/src/target \
    cargo build --release --locked --bin coderun-functions \
    && install -D -m 0755 target/release/coderun-functions /out/coderun-functions

# glibc 2.36 like the builder, CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/coderun-functions /usr/local/bin/coderun-functions
COPY --from=web /web/dist /usr/share/coderun/web
# Settings come from CODERUN__SECTION__KEY variables (see the README's configuration reference).
ENV CODERUN__HTTP__BIND=0.0.0.0:8080 \
    CODERUN__HTTP__WEB_DIR=/usr/share/coderun/web \
    CODERUN__LOG__FORMAT=json
EXPOSE 8080
USER 65532:65532
# `serve` is the default command; `create-user --username … --role admin` creates the first admin.
ENTRYPOINT ["/usr/local/bin/coderun-functions"]
