#!/usr/bin/env bash
# Offline validation of the deployment material in infra/ (run by `just test`, hence by CI):
#   - YAML syntax and duplicate keys (yamllint), every file under infra/ but infra/local/;
#   - the kustomizations: every file they name exists, every manifest is named by one;
#   - every Kubernetes manifest against the Kubernetes 1.30 OpenAPI schemas, strictly
#     (kubernetes-validate); KEDA ScaledObject / TriggerAuthentication and Gateway API Gateway /
#     HTTPRoute against minimal structural schemas written in infra/validate.py (their CRD
#     schemas are not in the core schemas and cannot be downloaded here);
#   - each overlay rendered (kustomize, or `kubectl kustomize`, when one is installed) and the
#     result checked again: schemas, references between objects, and what is about coderun
#     itself: CODERUN__ variable names against shared/src/defaults.toml, the KEDA trigger
#     against the queue settings, the quota against the capacity, the worker's rights, the jobs
#     namespace's isolation, the printed run Jobs against the LimitRange;
#   - the generic policies (Pod Security, RBAC breadth, probes, resources, image tags) of the
#     rendered overlays and of the Jobs `coderun-worker print-job` builds: checkov, with the
#     rules it skips listed and explained in infra/validate.py (CHECKOV_SKIPS) and, for a
#     single object, in that object's `checkov.io/skip…` annotations;
#   - the run images' Dockerfiles are the ones infra/runtimes/build.py generates from the
#     language recipes, and the compiled defaults declare the recipes' versions and libraries;
#   - the Dockerfiles (hadolint, plus rules of ours: pinned bases, non-root final USER);
#   - the SAM template (cfn-lint, then the real SAM transform and cfn-lint on its output);
#   - README's configuration reference lists every setting of shared/src/defaults.toml;
#   - this script (shellcheck).
# Exits non-zero on any finding.
#
# The tools live in virtualenvs at ${CODERUN_TOOLS_DIR:-<repo>/.tools}/venv and checkov-venv,
# installed from PyPI with the pinned versions of infra/validate-requirements.txt and
# infra/checkov-requirements.txt the first time (about a minute) and reused as long as those
# files do not change (infra/venv.sh). Nothing else is downloaded.
#
# Options are passed on to infra/validate.py (`--help`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${CODERUN_TOOLS_DIR:-$repo/.tools}"
# shellcheck source=infra/venv.sh
source "$repo/infra/venv.sh"
ensure_venv "$tools_dir/venv" "$repo/infra/validate-requirements.txt" validate
ensure_venv "$tools_dir/checkov-venv" "$repo/infra/checkov-requirements.txt" validate

exec "$tools_dir/venv/bin/python" "$repo/infra/validate.py" \
    --checkov "$tools_dir/checkov-venv/bin/checkov" "$@"
