#!/usr/bin/env bash
# The web app's tests, run by `just test`: install the npm packages (from the lock file), build
# the app (which fails over its size budgets), run the unit tests (Vitest), then the end-to-end
# and accessibility tests (Playwright in Debian's Chromium) against a real stack started by
# `coderun-e2e-stack` (API serving web/dist, Postgres, Redis, S3, a worker). Nothing here
# downloads a browser or a binary. Screenshots land in web/test-results/screenshots/.
set -euo pipefail

web="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$web")"
cd "$web"

export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
    echo "web/test.sh: $chromium is missing; install Debian's chromium (infra/local/install-deps.sh does)" >&2
    exit 1
fi

echo "web: npm ci"
npm ci --cache "${CODERUN_CACHE:-$HOME/.cache/coderun}/npm" --prefer-offline --no-audit --no-fund --loglevel=error

echo "web: build"
npm run --silent build

echo "web: unit tests"
npx vitest run

echo "web: end-to-end tests"
if [[ ! -f "$repo/tests/src/bin/coderun-e2e-stack.rs" ]]; then
    # The launcher comes with the API's web routes; without it there is no stack to test against.
    echo "web: SKIPPED the end-to-end tests: this tree has no coderun-e2e-stack (tests/src/bin/)" >&2
    exit 0
fi
if ! grep -q '^web_dir' "$repo/shared/src/defaults.toml"; then
    # Without the http.web_dir setting coderun-functions does not serve the app yet.
    echo "web: SKIPPED the end-to-end tests: coderun-functions has no http.web_dir setting in this tree" >&2
    exit 0
fi
target="${CARGO_TARGET_DIR:-$repo/target}"
# Built as the workspace's tests build it (with their dev-dependencies' features, e.g. tokio's
# test-util): after `cargo test --workspace` this compiles nothing, where a plain `cargo build`
# of the binary would compile the async stack a second time with other features.
(cd "$repo" && cargo test --quiet --workspace --no-run)
export CODERUN_E2E_STACK="$target/debug/coderun-e2e-stack"
export E2E_WEB_DIR="$web/dist"
unset E2E_BASE_URL
rm -rf test-results
npx playwright test
