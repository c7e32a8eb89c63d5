# coderun's everyday commands. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Where cargo-installed tools (s3s-fs) live; the test harness looks there too.
export CODERUN_TOOLS_DIR := env("CODERUN_TOOLS_DIR", justfile_directory() / ".tools")

# Show the recipes.
default:
    @{{just_executable()}} --list

# The whole platform locally: stack + API and web app on http://127.0.0.1:8080 + one worker
# (Ctrl-C stops it).
dev:
    bash infra/local/dev.sh

# A Python run end to end, followed live (starts the stack if needed and leaves it running).
demo *args:
    #!/usr/bin/env bash
    # Options: `just demo --help`.
    set -euo pipefail
    started=0
    bash infra/local/dev.sh --status >/dev/null 2>&1 || started=1
    bash infra/local/dev.sh --detach
    cargo build --quiet --workspace --bin coderun-demo
    target="${CARGO_TARGET_DIR:-target}"
    rc=0
    "$target/debug/coderun-demo" {{args}} || rc=$?
    if ((started)); then
        echo
        echo "demo: the local stack started for this demo keeps running (API http://127.0.0.1:8080);"
        echo "demo: stop it with: bash infra/local/dev.sh --stop"
    fi
    exit "$rc"

# Every test of the workspace, against real Postgres, Redis and S3 servers the harness starts;
# then the web app's unit and browser tests (web/test.sh, once the app exists); then the offline
# validation of the deployment material in infra/ (manifests, Dockerfiles, SAM).
test:
    bash infra/local/install-deps.sh
    cargo test --workspace
    if [[ -f web/test.sh ]]; then bash web/test.sh; fi
    bash infra/validate.sh

# Benchmark the platform (started in the background unless it runs, then stopped again); one
# table of every figure beside its floor at the end, and a JSON copy under the target dir's
# bench/. `just bench --suite runs --quick` for everyday use.
bench *args:
    #!/usr/bin/env bash
    set -euo pipefail
    # Everything in one optimised build of the whole workspace, so nothing compiles twice.
    cargo build --release --workspace --bins
    if ! bash infra/local/dev.sh --status >/dev/null 2>&1; then
        export CODERUN_BUILD_PROFILE=release
        bash infra/local/dev.sh --detach
        trap 'bash infra/local/dev.sh --stop' EXIT
    fi
    # The web suite measures the app in headless Chromium (web/bench/web.mjs) instead.
    if [[ " {{args}} " == *" --suite web "* ]]; then node web/bench/web.mjs --base-url http://127.0.0.1:8080; exit; fi
    "${CARGO_TARGET_DIR:-target}/release/coderun-bench" --base-url http://127.0.0.1:8080 {{args}}

# Build (or reuse from the cache) the language runtimes the local sandbox runs programs in:
# one root filesystem per recipe of infra/runtimes/ (all of them, or the ones named), rebuilt
# only when its recipe changes. Needs root (mmdebstrap; install-deps.sh installs it).
runtimes *names:
    python3 infra/runtimes/build.py {{names}}

# Format the code.
fmt:
    cargo fmt --all

# Clippy over every crate and target.
lint:
    cargo clippy --workspace --all-targets
