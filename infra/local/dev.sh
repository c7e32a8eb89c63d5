#!/usr/bin/env bash
# `just dev`: the whole platform on this machine.
#
#   infra/local/dev.sh           install deps, build, start the stack, the functions server and one
#                                worker, print the URLs, then wait (logs shown); Ctrl-C stops
#                                everything
#   infra/local/dev.sh --detach  the same, but return once the API and the worker are ready (used
#                                by `just demo` and `just bench`); when both already run, only say so
#   infra/local/dev.sh --stop    stop what --detach (or a foreground dev.sh) started
#   infra/local/dev.sh --status  show what runs; exit 0 only when everything does
#
# The functions server listens on 127.0.0.1:8080 and serves the web app there too (built from web/
# by build-web.sh into web/dist when its sources changed); the stack's ports are in stack.sh. In the
# local stack (CODERUN__LOCAL_STACK=true) the server seeds the users admin/admin and demo/demo.
# The worker (`coderun-worker`, local executor) runs programs in a bubblewrap sandbox under
# per-run uids and cgroups (as root; otherwise under the caller's uid in a delegated cgroup); it
# refuses to start when the sandbox cannot be built, and this script then shows why and fails.
# Its run folders are in .local/runs.
# Logs: .local/logs/ (functions.log, worker.log, postgres.log, redis.log, s3s-fs.log,
# s3-gateway.log).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/infra/local"
logs="$repo/.local/logs"
run="$repo/.local/run"
runs_dir="$repo/.local/runs"
fpidfile="$run/functions.pid"
wpidfile="$run/worker.pid"
flog="$logs/functions.log"
wlog="$logs/worker.log"
api_host="127.0.0.1:8080"
api_base="http://$api_host/api/v1"
ready_url="http://$api_host/readyz"
# The worker's consumer name: stable across restarts, so a restarted worker first finishes the
# stream entries it had taken (its pending entries are read again under the same name).
worker_name="${CODERUN__WORKER__NAME:-dev-worker}"

log() { echo "dev: $*"; }
die() { echo "dev: error: $*" >&2; exit 1; }

# True when pid file $1 names a live process whose command line contains $2.
alive() {
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(cat "$1" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}
functions_alive() { alive "$fpidfile" coderun-functions; }
worker_alive() { alive "$wpidfile" coderun-worker; }

# stop <pidfile> <name> <seconds to wait after SIGTERM before SIGKILL>
stop_process() {
    local i pid
    if alive "$1" "$2"; then
        pid="$(cat "$1")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < $3 * 10; i++)); do
            alive "$1" "$2" || break
            sleep 0.1
        done
        if alive "$1" "$2"; then
            kill -KILL "$pid" 2>/dev/null || true
            log "killed $2 (it did not stop within $3 s)"
        else
            log "stopped $2"
        fi
    fi
    rm -f "$1"
}

stop_all() {
    # The worker first: on SIGTERM it stops reading the stream and waits up to
    # worker.shutdown_grace_seconds (30 s by default) for the runs it is executing.
    if worker_alive; then
        log "stopping coderun-worker (it lets runs in flight finish, up to 30 s)"
    fi
    stop_process "$wpidfile" coderun-worker 40
    stop_process "$fpidfile" coderun-functions 10
    bash "$here/stack.sh" stop
}

# The lines a server wrote to log $2 from byte $3 on, without an error's backtrace (the message
# is what matters), then a failure naming $1 and its error.
fail_start() { # name log from what-happened
    local out reason
    out="$(tail -c "+$3" "$2" | sed '/^Stack backtrace:/,$d')"
    echo "--- the last lines of $2:" >&2
    printf '%s\n' "$out" | tail -n 40 >&2
    echo "---" >&2
    reason="$(printf '%s\n' "$out" | grep -m1 '^Error: ' | sed 's/^Error: //' || true)"
    die "$1 $4${reason:+: $reason}"
}

is_ready() {
    [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$ready_url" 2>/dev/null || true)" == 200 ]]
}

status() {
    local ok=0
    if functions_alive && is_ready; then
        log "functions up    $api_base (pid $(cat "$fpidfile"))"
    else
        log "functions down"; ok=1
    fi
    if worker_alive; then
        log "worker    up    $worker_name, local executor (pid $(cat "$wpidfile"))"
    else
        log "worker    down"; ok=1
    fi
    bash "$here/stack.sh" status || ok=1
    return "$ok"
}

mode=foreground
case "${1:-}" in
"") ;;
--detach) mode=detach ;;
--stop)
    stop_all
    exit 0
    ;;
--status)
    status
    exit
    ;;
*)
    echo "usage: $0 [--detach|--stop|--status]" >&2
    exit 2
    ;;
esac

if functions_alive || worker_alive; then
    if [[ "$mode" == detach ]] && functions_alive && worker_alive && is_ready; then
        log "already running ($api_base, worker pid $(cat "$wpidfile")); stop with infra/local/dev.sh --stop"
        exit 0
    fi
    functions_alive && log "coderun-functions is running (pid $(cat "$fpidfile"))"
    worker_alive && log "coderun-worker is running (pid $(cat "$wpidfile"))"
    die "coderun is already (partly) running; stop it with infra/local/dev.sh --stop"
fi
if (exec 3<>"/dev/tcp/${api_host%:*}/${api_host#*:}") 2>/dev/null; then
    die "port ${api_host#*:} is in use by another process"
fi

bash "$here/install-deps.sh"

# CODERUN_BUILD_PROFILE=release builds optimised binaries (what `just bench` measures).
profile="${CODERUN_BUILD_PROFILE:-debug}"
profile_flag=()
[[ "$profile" == release ]] && profile_flag=(--release)
log "cargo build ${profile_flag[*]} --bin coderun-functions --bin coderun-worker --bin coderun-s3-gateway"
(cd "$repo" && cargo build "${profile_flag[@]}" --bin coderun-functions --bin coderun-worker --bin coderun-s3-gateway)
target="${CARGO_TARGET_DIR:-$repo/target}"
[[ "$target" == /* ]] || target="$repo/$target"
fbin="$target/$profile/coderun-functions"
wbin="$target/$profile/coderun-worker"
[[ -x "$fbin" ]] || die "built binary not found at $fbin"
[[ -x "$wbin" ]] || die "built binary not found at $wbin"
# The S3 gateway answers the browser's CORS preflights for s3s-fs (stack.sh starts it; presigned
# URLs are then signed for it through CODERUN__STORAGE__PUBLIC_ENDPOINT).
export CODERUN_S3_GATEWAY="$target/$profile/coderun-s3-gateway"
[[ -x "$CODERUN_S3_GATEWAY" ]] || die "built binary not found at $CODERUN_S3_GATEWAY"

# The web app, served by coderun-functions at / (nothing to build before web/ exists).
web_dir="$(bash "$here/build-web.sh")"
if [[ -n "$web_dir" ]]; then
    export CODERUN__HTTP__WEB_DIR="$web_dir"
fi

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
# The worker refuses a run folder others may write to (whatever the umask).
mkdir -p -m 0711 "$runs_dir"
# A start-up error is one readable line in the log, not a backtrace (panics still get theirs
# when RUST_BACKTRACE asks for them).
export RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}"
echo "--- $(date -u +%FT%TZ) dev.sh start" >>"$flog"
flog_from=$(($(stat -c %s "$flog") + 1))
# Migrating is a step of its own: the servers only check that the schema is current.
log "coderun-functions migrate (log: $flog)"
if ! "$fbin" migrate </dev/null >>"$flog" 2>&1; then
    fail_start "coderun-functions migrate" "$flog" "$flog_from" "failed"
fi
log "starting coderun-functions on $api_host (log: $flog)"
# Own session: Ctrl-C reaches only this script, which then stops the server in order.
# glibc's allocator is held to two arenas and a fixed mmap threshold, so the multi-MiB buffers
# of archiving and snapshotting a task go back to the system when freed (docs/decisions.md,
# "The API's allocator"); the same variables are set in infra/k8s and infra/sam.
# Status callbacks may go to a receiver on this machine (loopback) in the local stack only;
# the API checks an endpoint's literal address, the worker every address it connects to.
export CODERUN__WEBHOOKS__ALLOW_LOOPBACK=true
setsid env MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=1048576 "$fbin" </dev/null >>"$flog" 2>&1 &
fpid=$!
echo "$fpid" >"$fpidfile"

for ((i = 0; i < 1200; i++)); do
    is_ready && break
    if ! kill -0 "$fpid" 2>/dev/null; then
        fail_start coderun-functions "$flog" "$flog_from" "exited during start-up"
    fi
    sleep 0.1
done
if ! is_ready; then
    fail_start coderun-functions "$flog" "$flog_from" "did not answer 200 on $ready_url within 120 s"
fi

# The worker starts after the server is ready (the schema is migrated already). It is ready once it logs
# "worker consuming" (after its sandbox pre-flight check, a trial run through bubblewrap).
export CODERUN__WORKER__NAME="$worker_name"
export CODERUN__WORKER__WORK_DIR="$runs_dir"
if [[ "$(id -u)" -ne 0 ]]; then
    log "note: not root: the worker runs programs under your uid (per-run uids need root) and needs a delegated memory cgroup"
fi
log "starting coderun-worker $worker_name (log: $wlog)"
echo "--- $(date -u +%FT%TZ) dev.sh start" >>"$wlog"
wlog_from=$(($(stat -c %s "$wlog") + 1))
setsid "$wbin" </dev/null >>"$wlog" 2>&1 &
wpid=$!
echo "$wpid" >"$wpidfile"

worker_ready=0
for ((i = 0; i < 600; i++)); do
    if tail -c "+$wlog_from" "$wlog" | grep -q "worker consuming"; then
        worker_ready=1
        break
    fi
    if ! kill -0 "$wpid" 2>/dev/null; then
        # Typically the sandbox pre-flight check: bubblewrap missing, no user namespaces, no
        # memory cgroup. The worker never runs code unconfined, so the stack does not start.
        fail_start coderun-worker "$wlog" "$wlog_from" "refused to start"
    fi
    sleep 0.1
done
if ((!worker_ready)); then
    fail_start coderun-worker "$wlog" "$wlog_from" "did not report ready within 60 s"
fi

app_url="(no web app: web/package.json does not exist yet)"
[[ -z "$web_dir" ]] || app_url="http://$api_host/"
cat <<BANNER

coderun is up (local stack)
  app        $app_url
  API base   $api_base
  OpenAPI    $api_base/openapi.json
  health     $ready_url
  worker     $worker_name (pid $wpid), local executor (bubblewrap sandbox), run folders in $runs_dir
  S3 gateway ${CODERUN__STORAGE__PUBLIC_ENDPOINT:-(none)}  (presigned URLs for the browser; CORS for the app)
  S3         $CODERUN__STORAGE__ENDPOINT  access key $CODERUN__STORAGE__ACCESS_KEY, secret key $CODERUN__STORAGE__SECRET_KEY, bucket $CODERUN__STORAGE__BUCKET
  Postgres   $CODERUN__DATABASE__URL
  Redis      $CODERUN__REDIS__URL
  logins     admin / admin   (role admin)
             demo  / demo    (role student)
  logs       $logs/  (functions.log, worker.log, …)
BANNER

if [[ "$mode" == detach ]]; then
    trap - EXIT INT TERM
    echo "  stop with  infra/local/dev.sh --stop"
    exit 0
fi

echo "  Ctrl-C stops everything"
echo
# Both logs, each line block headed by its file name.
tail -n 0 -F "$flog" "$wlog" &
tail_pid=$!
set +e
wait -n "$fpid" "$wpid"
rc=$?
set -e
if ! kill -0 "$fpid" 2>/dev/null; then
    log "coderun-functions exited with status $rc"
else
    log "coderun-worker exited with status $rc"
fi
((rc != 0)) || rc=1
exit "$rc"
