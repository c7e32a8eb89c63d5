#!/usr/bin/env bash
# Installs what the local stack (`just dev`) and the test harness (`just test`) need:
#   - Debian packages: PostgreSQL server, redis-server, bubblewrap, python3, curl; and, as root,
#     chromium with the DejaVu fonts, the headless browser of the web app's end-to-end tests
#     (driven through playwright-core, which downloads no browser of its own)
#   - s3s-fs (the S3-compatible server) via `cargo install`, into $CODERUN_TOOLS_DIR/bin
#   - the language runtimes of the local sandbox (root filesystems built with mmdebstrap from
#     the recipes of infra/runtimes/ into /var/cache/coderun/runtimes, once; `just runtimes`),
#     when root; otherwise it says how to build them
#
# Idempotent: when everything is present it only checks and prints nothing but a summary line.
# apt-get runs only when this script runs as root; otherwise it prints the packages to install
# and exits 1.
#
# Environment:
#   CODERUN_TOOLS_DIR   where cargo-installed tools go (default: <repo>/.tools; bin in ./bin)
#   CODERUN_RUNTIMES_DIR  where the runtimes go (default as root: /var/cache/coderun/runtimes)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools_dir="${CODERUN_TOOLS_DIR:-$repo/.tools}"
s3s_version="0.14.1"

# --- Debian packages ------------------------------------------------------------------------

# Directory holding the PostgreSQL server binaries (initdb, postgres, pg_ctl), or nothing.
pg_bindir() {
    local dir
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "$dir" && -x "$dir/postgres" && -x "$dir/initdb" ]]; then
            echo "$dir"
            return
        fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        if [[ -x "$dir/postgres" && -x "$dir/initdb" ]]; then
            echo "$dir"
            return
        fi
    done
    if command -v postgres >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v postgres)"
    fi
}

missing=()
[[ -n "$(pg_bindir)" ]] || missing+=(postgresql)
command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
# The language runtimes' builder: mmdebstrap, and dpkg-query to read what it installed.
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
# The web app's browser tests only: installed when we can, never a reason to fail `just dev`.
browser_missing=()
command -v chromium >/dev/null 2>&1 || browser_missing+=(chromium)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || browser_missing+=(fonts-dejavu-core)
if ((${#browser_missing[@]} > 0)); then
    if [[ "$(id -u)" -eq 0 ]]; then
        missing+=("${browser_missing[@]}")
    else
        echo "install-deps: note: the web app's browser tests need: sudo apt-get install -y ${browser_missing[*]}" >&2
    fi
fi

if ((${#missing[@]} > 0)); then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "install-deps: missing Debian packages; install them with:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "install-deps: apt-get update"
    apt-get update -qq >/dev/null
    # The packages' own service start-up (a system cluster on 5432, redis on 6379) is harmless:
    # the local stack uses ports of its own.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    for pkg in "${missing[@]}"; do
        echo "install-deps: installed $pkg (apt)"
    done
    if [[ -z "$(pg_bindir)" ]]; then
        echo "install-deps: PostgreSQL server binaries still not found after installing" >&2
        exit 1
    fi
fi

# --- cargo-installed tools --------------------------------------------------------------------

s3s_bin="$tools_dir/bin/s3s-fs"
if [[ ! -x "$s3s_bin" ]] || [[ "$("$s3s_bin" --version 2>/dev/null)" != "s3s-fs $s3s_version" ]]; then
    if ! command -v cargo >/dev/null 2>&1; then
        echo "install-deps: cargo not found on PATH (needed to install s3s-fs)" >&2
        exit 1
    fi
    echo "install-deps: building s3s-fs $s3s_version into $tools_dir (takes a few minutes once)"
    mkdir -p "$tools_dir"
    log="$(mktemp)"
    if ! cargo install --locked --root "$tools_dir" s3s-fs --version "$s3s_version" \
        --features binary >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "install-deps: cargo install s3s-fs failed (full log: $log)" >&2
        exit 1
    fi
    rm -f "$log"
    echo "install-deps: installed s3s-fs $s3s_version ($s3s_bin)"
fi

# --- language runtimes -----------------------------------------------------------------------

# Cached by recipe: after the first build (a few minutes per language) this only checks.
if [[ "$(id -u)" -eq 0 ]]; then
    python3 "$repo/infra/runtimes/build.py"
    runtimes="$(python3 "$repo/infra/runtimes/build.py" --where)"
else
    runtimes="not built (not root)"
    echo "install-deps: note: the local sandbox's language runtimes are built as root:" \
        "just runtimes (mmdebstrap)" >&2
fi

echo "install-deps: ok (postgres: $(pg_bindir), s3s-fs: $s3s_bin, runtimes: $runtimes)"
