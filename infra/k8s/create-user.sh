#!/usr/bin/env bash
# Creates a coderun user in a cluster where coderun runs — the first admin of a new
# installation:
#
#   infra/k8s/create-user.sh admin            # role admin; asks for the password
#   CODERUN_NEW_PASSWORD=… infra/k8s/create-user.sh alice teacher
#
# The API image has no shell, and `kubectl exec` cannot pass the password in the environment,
# so this starts a one-off pod from the API Deployment's own pod spec (same image, settings,
# secrets, security context) running `coderun-functions create-user`, with the password in a
# short-lived Secret that is deleted afterwards. Needs kubectl and jq.
#
# Environment: CODERUN_NAMESPACE (default coderun), CODERUN_NEW_PASSWORD (else asked).
set -euo pipefail

if (($# < 1 || $# > 2)); then
    echo "usage: $0 USERNAME [student|teacher|admin]   (role: admin by default)" >&2
    exit 2
fi
username="$1"
role="${2:-admin}"
namespace="${CODERUN_NAMESPACE:-coderun}"
for tool in kubectl jq; do
    command -v "$tool" >/dev/null || { echo "create-user: $tool not found" >&2; exit 1; }
done

password="${CODERUN_NEW_PASSWORD:-}"
if [[ -z "$password" ]]; then
    read -rsp "Password for $username: " password
    echo
fi

suffix="$(date +%s)-$$"
secret="coderun-new-user-$suffix"
pod="coderun-create-user-$suffix"

deployment="$(kubectl -n "$namespace" get deployment coderun-functions -o json)"
image="$(jq -r '.spec.template.spec.containers[0].image' <<<"$deployment")"
overrides="$(jq --arg secret "$secret" --arg pod "$pod" --arg username "$username" \
    --arg role "$role" '
    .spec.template.spec
    | .restartPolicy = "Never"
    | .containers = [.containers[0]
        | .name = $pod
        | .args = ["create-user", "--username", $username, "--role", $role]
        | .envFrom = ((.envFrom // []) + [{"secretRef": {"name": $secret}}])
        | del(.ports, .startupProbe, .readinessProbe, .livenessProbe)]
    | {"apiVersion": "v1", "spec": .}' <<<"$deployment")"

kubectl -n "$namespace" create secret generic "$secret" \
    --from-literal=CODERUN_NEW_PASSWORD="$password" >/dev/null
trap 'kubectl -n "$namespace" delete secret "$secret" --ignore-not-found >/dev/null' EXIT

kubectl -n "$namespace" run "$pod" --rm -i --quiet --restart=Never --image="$image" \
    --overrides="$overrides"
