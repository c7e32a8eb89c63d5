#!/usr/bin/env bash
# `just dev`: the whole platform on this machine.
#
#   infra/local/dev.sh           install deps, build, start the stack and the functions server,
#                                print the URLs, then wait (logs shown); Ctrl-C stops everything
#   infra/local/dev.sh --detach  the same, but return once the API is ready (used by `just bench`)
#   infra/local/dev.sh --stop    stop what --detach started
#
# The functions server listens on 127.0.0.1:8080; the stack's ports are in stack.sh. In the
# local stack (CODERUN__LOCAL_STACK=true) the server seeds the users admin/admin and demo/demo.
# Logs: .local/logs/ (functions.log, postgres.log, redis.log, s3s-fs.log).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/infra/local"
logs="$repo/.local/logs"
run="$repo/.local/run"
pidfile="$run/functions.pid"
flog="$logs/functions.log"
api_host="127.0.0.1:8080"
api_base="http://$api_host/api/v1"
ready_url="http://$api_host/readyz"

log() { echo "dev: $*"; }
die() { echo "dev: error: $*" >&2; exit 1; }

functions_alive() {
    local pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q coderun-functions
}

stop_functions() {
    local i pid
    if functions_alive; then
        pid="$(cat "$pidfile")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            functions_alive || break
            sleep 0.1
        done
        functions_alive && kill -KILL "$pid" 2>/dev/null || true
        log "stopped coderun-functions"
    fi
    rm -f "$pidfile"
}

stop_all() {
    stop_functions
    bash "$here/stack.sh" stop
}

is_ready() {
    [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$ready_url" 2>/dev/null || true)" == 200 ]]
}

mode=foreground
case "${1:-}" in
"") ;;
--detach) mode=detach ;;
--stop)
    stop_all
    exit 0
    ;;
*)
    echo "usage: $0 [--detach|--stop]" >&2
    exit 2
    ;;
esac

if functions_alive; then
    if [[ "$mode" == detach ]] && is_ready; then
        log "already running ($api_base); stop with infra/local/dev.sh --stop"
        exit 0
    fi
    die "coderun-functions is already running (pid $(cat "$pidfile")); stop it with infra/local/dev.sh --stop"
fi
if (exec 3<>"/dev/tcp/${api_host%:*}/${api_host#*:}") 2>/dev/null; then
    die "port ${api_host#*:} is in use by another process"
fi

bash "$here/install-deps.sh"

log "cargo build --bin coderun-functions"
(cd "$repo" && cargo build --bin coderun-functions)
target="${CARGO_TARGET_DIR:-$repo/target}"
[[ "$target" == /* ]] || target="$repo/$target"
bin="$target/debug/coderun-functions"
[[ -x "$bin" ]] || die "built binary not found at $bin"

bash "$here/stack.sh" start
eval "$(bash "$here/stack.sh" env)"

# From here on, a failure (or Ctrl-C in the foreground) stops everything again.
tail_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n "$tail_pid" ]] && kill "$tail_pid" 2>/dev/null || true
    echo
    stop_all
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$logs" "$run"
log "starting coderun-functions on $api_host (log: $flog)"
echo "--- $(date -u +%FT%TZ) dev.sh start" >>"$flog"
# Own session: Ctrl-C reaches only this script, which then stops the server in order.
setsid "$bin" </dev/null >>"$flog" 2>&1 &
fpid=$!
echo "$fpid" >"$pidfile"

for ((i = 0; i < 1200; i++)); do
    is_ready && break
    if ! kill -0 "$fpid" 2>/dev/null; then
        tail -n 40 "$flog" >&2
        die "coderun-functions exited during start-up (log: $flog)"
    fi
    sleep 0.1
done
if ! is_ready; then
    tail -n 40 "$flog" >&2
    die "coderun-functions did not answer 200 on $ready_url within 120 s (log: $flog)"
fi

cat <<BANNER

coderun is up (local stack)
  API base   $api_base
  OpenAPI    $api_base/openapi.json
  health     $ready_url
  S3         $CODERUN__STORAGE__ENDPOINT  access key $CODERUN__STORAGE__ACCESS_KEY, secret key $CODERUN__STORAGE__SECRET_KEY, bucket $CODERUN__STORAGE__BUCKET
  Postgres   $CODERUN__DATABASE__URL
  Redis      $CODERUN__REDIS__URL
  logins     admin / admin   (role admin)
             demo  / demo    (role student)
  logs       $logs/
BANNER

if [[ "$mode" == detach ]]; then
    trap - EXIT INT TERM
    echo "  stop with  infra/local/dev.sh --stop"
    exit 0
fi

echo "  Ctrl-C stops everything"
echo
tail -n 0 -F "$flog" &
tail_pid=$!
set +e
wait "$fpid"
rc=$?
set -e
log "coderun-functions exited with status $rc"
exit "$rc"
