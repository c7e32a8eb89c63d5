# coderun's everyday commands. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Where cargo-installed tools (s3s-fs) live; the test harness looks there too.
export CODERUN_TOOLS_DIR := env("CODERUN_TOOLS_DIR", justfile_directory() / ".tools")

# Show the recipes.
default:
    @{{just_executable()}} --list

# The whole platform locally: stack + API on http://127.0.0.1:8080 (Ctrl-C stops it).
dev:
    bash infra/local/dev.sh

# Every test of the workspace, against real Postgres, Redis and S3 servers the harness starts.
test:
    bash infra/local/install-deps.sh
    cargo test --workspace

# Start the platform in the background, run the benchmark against it, stop it again.
bench:
    #!/usr/bin/env bash
    set -euo pipefail
    bash infra/local/dev.sh --detach
    trap 'bash infra/local/dev.sh --stop' EXIT
    cargo run --release -p coderun-tests --bin coderun-bench -- --base-url http://127.0.0.1:8080

# Format the code.
fmt:
    cargo fmt --all

# Clippy over every crate and target.
lint:
    cargo clippy --workspace --all-targets
