#!/usr/bin/env bash
# Tests a running coderun API against its own OpenAPI document with schemathesis (`--checks
# all`: no server error, every status, media type, header and body as documented, bad input
# refused, good input accepted, …), with a fixed seed and a bounded number of examples so a
# run is repeatable and its time bounded; the exceptions are in schemathesis.toml beside it. The contract test of coderun-tests
# (tests/tests/server.rs) starts an API on a free port and runs this; by hand, against
# `just dev`:
#
#   TOKEN=$(curl -sf http://127.0.0.1:8080/api/v1/auth/login -H 'Content-Type: application/json' \
#     -d '{"username":"admin","password":"admin"}' | jq -r .token)
#   bash tests/contract/schemathesis.sh http://127.0.0.1:8080 "$TOKEN"
#
# Usage: schemathesis.sh BASE_URL TOKEN [more schemathesis options]. schemathesis is installed
# from PyPI, pinned (tests/contract/requirements.txt), into
# ${CODERUN_TOOLS_DIR:-<repo>/.tools}/schemathesis-venv the first time.
# Environment: SCHEMATHESIS_SEED (default 20261130), SCHEMATHESIS_MAX_EXAMPLES (default 25).
set -euo pipefail

if (($# < 2)); then
    echo "usage: $0 BASE_URL TOKEN [schemathesis options]" >&2
    exit 2
fi
base="${1%/}"
token="$2"
shift 2

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools_dir="${CODERUN_TOOLS_DIR:-$repo/.tools}"
# shellcheck source=infra/venv.sh
source "$repo/infra/venv.sh"
ensure_venv "$tools_dir/schemathesis-venv" "$repo/tests/contract/requirements.txt" schemathesis

st() {
    "$tools_dir/schemathesis-venv/bin/schemathesis" \
        --config-file "$repo/tests/contract/schemathesis.toml" --no-color run \
        "$base/api/v1/openapi.json" \
        --url "$base" \
        --header "Authorization: Bearer $token" \
        --seed "${SCHEMATHESIS_SEED:-20261130}" \
        --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
        --workers 1 \
        --request-timeout 10 \
        --generation-database none \
        "$@"
}

# Every check, on ASCII text: JSON Schema counts characters where the server counts UTF-8
# bytes (passwords, commands, paths), and in ASCII the two agree.
echo "schemathesis: every check, ASCII strings" >&2
st --checks all --generation-codec ascii "$@"
# Any Unicode text: everything but the length-in-bytes rules must hold as well.
echo "schemathesis: every check but valid-accepted/invalid-rejected, Unicode strings" >&2
st --checks all --exclude-checks positive_data_acceptance,negative_data_rejection "$@"
