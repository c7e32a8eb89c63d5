#!/usr/bin/env bash
# Builds the web app (web/ → web/dist) for `just dev`, unless it is up to date:
#   - nothing to do while web/package.json does not exist;
#   - `npm ci` (dependencies exactly as web/package-lock.json says, from the npm cache at
#     $npm_config_cache or ${CODERUN_CACHE:-$HOME/.cache/coderun}/npm, preferring what is
#     already there) when
#     web/node_modules is missing or older than the lock file;
#   - `npm run build` when web/dist/index.html is missing or older than any source of the app
#     (web/src, web/public, web/index.html, the package and lock files, web/openapi.json, the
#     Vite and TypeScript configurations).
# Prints the folder to serve (web/dist) on stdout when there is an app, nothing otherwise;
# progress goes to stderr.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
web="$repo/web"
dist="$web/dist"

log() { echo "build-web: $*" >&2; }

if [[ ! -f "$web/package.json" ]]; then
    log "no web/package.json yet: serving the API only"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    log "error: npm not found; install Node.js 20 or newer with npm to build the web app"
    exit 1
fi

home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
npm_cache="${npm_config_cache:-${CODERUN_CACHE:-$home/.cache/coderun}/npm}"

# The sources whose change makes the build stale.
sources() {
    find "$web/src" "$web/public" -type f 2>/dev/null || true
    for f in index.html package.json package-lock.json openapi.json vite.config.ts \
        vite.config.js svelte.config.js svelte.config.ts tsconfig.json tsconfig.app.json \
        tsconfig.node.json; do
        if [[ -f "$web/$f" ]]; then echo "$web/$f"; fi
    done
    return 0
}

# True when file $1 is missing or older than any file named on stdin.
stale() {
    local target="$1" file
    [[ -f "$target" ]] || return 0
    while IFS= read -r file; do
        [[ "$file" -nt "$target" ]] && return 0
    done
    return 1
}

if ! stale "$dist/index.html" < <(sources); then
    log "web/dist is up to date"
    echo "$dist"
    exit 0
fi

cd "$web"
if [[ ! -f node_modules/.package-lock.json ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
    log "npm ci (cache: $npm_cache)"
    mkdir -p "$npm_cache"
    npm ci --cache "$npm_cache" --prefer-offline --no-audit --no-fund >&2
fi
log "npm run build"
npm run build >&2
[[ -f "$dist/index.html" ]] || { log "error: the build wrote no $dist/index.html"; exit 1; }
echo "$dist"
