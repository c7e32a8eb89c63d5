#!/usr/bin/env bash
# Sourced, not run: `ensure_venv VENV REQUIREMENTS LABEL` makes VENV a Python virtualenv holding
# exactly the pinned wheels of REQUIREMENTS, installed from PyPI the first time and again only
# when that file changes (a checksum stamp in the venv). Used by infra/validate.sh (its tools,
# checkov) and tests/contract/schemathesis.sh. Needs python3 ≥ 3.11 with venv (Debian:
# python3-venv, installed here with apt when run as root). Messages go to stderr, prefixed LABEL.

ensure_venv() {
    local venv="$1" requirements="$2" label="$3"
    local stamp="$venv/.coderun-requirements.sha256" want have python log
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    have="$(cat "$stamp" 2>/dev/null || true)"
    if [[ -x "$venv/bin/python" && "$have" == "$want" ]]; then
        return 0
    fi
    python="$(command -v python3 || true)"
    if [[ -z "$python" ]]; then
        echo "$label: python3 not found (Debian: apt-get install python3 python3-venv)" >&2
        return 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "$label: $python is $("$python" --version 2>&1); Python 3.11 or newer is needed" >&2
        return 1
    fi
    # Debian's python3 needs python3-venv for `-m venv` (ensurepip).
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
            echo "$label: installing python3-venv (apt)" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                python3-venv >/dev/null
        else
            echo "$label: $python cannot create a venv; install python3-venv" >&2
            return 1
        fi
    fi
    echo "$label: installing the pinned tools of ${requirements##*/} into $venv (once)" >&2
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv --clear "$venv"
    log="$(mktemp)"
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --only-binary=:all: -r "$requirements" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "$label: pip install -r $requirements failed" >&2
        return 1
    fi
    rm -f "$log"
    echo "$want" >"$stamp"
}
