#!/usr/bin/env bash
# Offline validation of the deployment material in infra/ (run by `just test`, hence by CI):
#   - YAML syntax and duplicate keys (yamllint), every file under infra/ but infra/local/;
#   - the kustomizations: every file they name exists, every manifest is named by one;
#   - every Kubernetes manifest against the Kubernetes 1.30 OpenAPI schemas, strictly
#     (kubernetes-validate); KEDA ScaledObject / TriggerAuthentication and Gateway API Gateway /
#     HTTPRoute against minimal structural schemas written in infra/validate.py (their CRD
#     schemas are not in the core schemas and cannot be downloaded here);
#   - each overlay rendered (kustomize, or `kubectl kustomize`, when one is installed) and the
#     result checked again: schemas, references between objects, the "restricted" Pod Security
#     rules, CODERUN__ variable names against shared/src/defaults.toml, the KEDA trigger against
#     the queue settings;
#   - the run images' Dockerfiles are the ones infra/runtimes/build.py generates from the
#     language recipes, and the compiled defaults declare the recipes' versions and libraries;
#   - the Dockerfiles (hadolint, plus rules of ours: pinned bases, non-root final USER);
#   - the SAM template (cfn-lint, then the real SAM transform and cfn-lint on its output);
#   - README's configuration reference lists every setting of shared/src/defaults.toml;
#   - this script (shellcheck).
# Exits non-zero on any finding.
#
# The tools live in a virtualenv at ${CODERUN_TOOLS_DIR:-<repo>/.tools}/venv, installed from
# PyPI with the pinned versions of infra/validate-requirements.txt the first time (about half a
# minute) and reused as long as that file does not change. Nothing else is downloaded.
#
# Options are passed on to infra/validate.py (`--help`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${CODERUN_TOOLS_DIR:-$repo/.tools}"
venv="$tools_dir/venv"
requirements="$repo/infra/validate-requirements.txt"
stamp="$venv/.coderun-requirements.sha256"

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"

if [[ ! -x "$venv/bin/python" || "$have" != "$want" ]]; then
    python="$(command -v python3 || true)"
    if [[ -z "$python" ]]; then
        echo "validate: python3 not found (Debian: apt-get install python3 python3-venv)" >&2
        exit 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "validate: $python is $("$python" --version 2>&1); Python 3.11 or newer is needed" >&2
        exit 1
    fi
    # Debian's python3 needs python3-venv for `-m venv` (ensurepip).
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
            echo "validate: installing python3-venv (apt)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                python3-venv >/dev/null
        else
            echo "validate: $python cannot create a venv; install python3-venv" >&2
            exit 1
        fi
    fi
    echo "validate: installing the pinned tools into $venv (once)"
    mkdir -p "$tools_dir"
    "$python" -m venv --clear "$venv"
    log="$(mktemp)"
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --only-binary=:all: -r "$requirements" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "validate: pip install -r infra/validate-requirements.txt failed" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$want" >"$stamp"
fi

exec "$venv/bin/python" "$repo/infra/validate.py" "$@"
