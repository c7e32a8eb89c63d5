#!/usr/bin/env bash
# The local stack's servers, on fixed ports of their own so they never clash with a system
# Postgres (5432) or Redis (6379):
#
#   Postgres  127.0.0.1:55432  database `coderun`, user `coderun`, trust auth on loopback
#                              data: .local/postgres (initdb on first start)
#   Redis     127.0.0.1:56379  append-only file in .local/redis
#   S3        127.0.0.1:59000  s3s-fs, data in .local/s3, access key `coderun`,
#                              secret key `coderun-secret`
#   S3 gateway 127.0.0.1:59001 coderun-s3-gateway in front of s3s-fs: answers the browser's CORS
#                              preflights for the app (http://127.0.0.1:8080) and forwards the rest
#                              unchanged; presigned URLs are signed for it
#                              (CODERUN__STORAGE__PUBLIC_ENDPOINT). Started only when
#                              $CODERUN_S3_GATEWAY names the built binary (dev.sh does).
#
# Logs go to .local/logs/, pid files and the Postgres socket to .local/run/.
#
# Usage: infra/local/stack.sh start|stop|status|env
#   start   start whatever is not running (in the background), wait until each answers
#   stop    stop all three
#   status  show what runs and answers; exit 0 only when all three do
#   env     print the `export CODERUN__...=` lines the coderun binaries need
#
# Environment:
#   CODERUN_TOOLS_DIR   where s3s-fs is installed (default: <repo>/.tools; see install-deps.sh)
#   CODERUN_S3_GATEWAY  the coderun-s3-gateway binary to start (cargo build --bin coderun-s3-gateway)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools_dir="${CODERUN_TOOLS_DIR:-$repo/.tools}"
local_dir="$repo/.local"
logs="$local_dir/logs"
run="$local_dir/run"
pgdata="$local_dir/postgres"
pgsock="$run/postgres"

PG_PORT=55432
REDIS_PORT=56379
S3_PORT=59000
S3_ACCESS_KEY=coderun
S3_SECRET_KEY=coderun-secret

DATABASE_URL="postgres://coderun@127.0.0.1:$PG_PORT/coderun"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
S3_GATEWAY_PORT=59001
S3_GATEWAY="http://127.0.0.1:$S3_GATEWAY_PORT"
APP_ORIGIN="http://127.0.0.1:8080"

log() { echo "stack: $*"; }
die() { echo "stack: error: $*" >&2; exit 1; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True when pid file $1 names a live process whose command line contains $2.
pid_alive() {
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(cat "$1" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

# --- Postgres ---------------------------------------------------------------------------------

pg_bindir() {
    local dir
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "$dir" && -x "$dir/postgres" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return
        fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        if [[ -x "$dir/postgres" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return
        fi
    done
    if command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return
    fi
    die "PostgreSQL server binaries not found; run infra/local/install-deps.sh"
}

# initdb and postgres refuse to run as root: then they run as `postgres` (or `nobody`).
pg_user=""
if [[ "$(id -u)" -eq 0 ]]; then
    if id -u postgres >/dev/null 2>&1; then pg_user=postgres; else pg_user=nobody; fi
fi

as_pg() {
    if [[ -n "$pg_user" ]]; then
        (cd / && setpriv --reuid="$(id -u "$pg_user")" --regid="$(id -g "$pg_user")" \
            --clear-groups -- "$@")
    else
        "$@"
    fi
}

pg_running() { [[ -f "$pgdata/PG_VERSION" ]] && as_pg "$(pg_bindir)/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; }
pg_ready() { "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U coderun -d postgres; }

start_postgres() {
    local bindir
    bindir="$(pg_bindir)"
    if pg_running; then
        log "postgres already running"
        return
    fi
    port_open "$PG_PORT" && die "port $PG_PORT is in use by another process"
    mkdir -p "$pgdata" "$pgsock" "$logs"
    touch "$logs/postgres.log"
    if [[ -n "$pg_user" ]]; then
        chown -R "$pg_user:" "$pgdata" "$pgsock" "$logs/postgres.log"
        as_pg test -w "$pgdata" ||
            die "user $pg_user cannot reach $pgdata (a parent folder is not world-searchable)"
    fi
    chmod 700 "$pgdata"
    local fresh=0
    if [[ ! -f "$pgdata/PG_VERSION" ]]; then
        log "initdb into $pgdata"
        as_pg "$bindir/initdb" -D "$pgdata" -U coderun -A trust -E UTF8 --locale=C.UTF-8 \
            >>"$logs/postgres.log" 2>&1 ||
            { tail -n 20 "$logs/postgres.log" >&2; die "initdb failed"; }
        fresh=1
    fi
    # A Unix socket path is limited to ~107 bytes; past that, TCP only.
    local sock="$pgsock"
    ((${#sock} < 90)) || sock=""
    log "starting postgres on 127.0.0.1:$PG_PORT"
    as_pg setsid "$bindir/pg_ctl" -D "$pgdata" -l "$logs/postgres.log" -w -t 60 \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k '$sock'" start >/dev/null ||
        { tail -n 20 "$logs/postgres.log" >&2; die "postgres did not start"; }
    wait_for "postgres" pg_ready
    if ((fresh)) || ! "$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U coderun -d coderun -Atc 'select 1' >/dev/null 2>&1; then
        "$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U coderun -d postgres -q \
            -c 'CREATE DATABASE coderun' >/dev/null
        log "created database coderun"
    fi
}

stop_postgres() {
    if pg_running; then
        as_pg "$(pg_bindir)/pg_ctl" -D "$pgdata" -m fast -w -t 60 stop >/dev/null
        log "stopped postgres"
    fi
}

# --- Redis ------------------------------------------------------------------------------------

redis_ready() {
    local reply
    if command -v redis-cli >/dev/null 2>&1; then
        [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
    else
        exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" 2>/dev/null || return 1
        printf 'PING\r\n' >&3
        read -r -t 2 reply <&3 || true
        exec 3<&-
        [[ "$reply" == "+PONG"* ]]
    fi
}

start_redis() {
    if pid_alive "$run/redis.pid" redis-server; then
        log "redis already running"
        return
    fi
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found; run infra/local/install-deps.sh"
    port_open "$REDIS_PORT" && die "port $REDIS_PORT is in use by another process"
    mkdir -p "$local_dir/redis" "$run" "$logs"
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes \
        --appendfsync everysec --dir "$local_dir/redis" --daemonize yes --pidfile "$run/redis.pid" \
        --logfile "$logs/redis.log" </dev/null
    wait_for "redis" redis_ready
}

stop_pidfile() { # pidfile name-in-cmdline label
    local pid i
    if pid_alive "$1" "$2"; then
        pid="$(cat "$1")"
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            pid_alive "$1" "$2" || break
            sleep 0.1
        done
        pid_alive "$1" "$2" && kill -9 "$pid" 2>/dev/null || true
        log "stopped $3"
    fi
    rm -f "$1"
}

# --- S3 (s3s-fs) ------------------------------------------------------------------------------

s3_ready() {
    local code
    code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$S3_ENDPOINT/" 2>/dev/null || true)"
    [[ -n "$code" && "$code" != 000 ]]
}

start_s3() {
    if pid_alive "$run/s3s-fs.pid" s3s-fs; then
        log "s3s-fs already running"
        return
    fi
    local bin="$tools_dir/bin/s3s-fs"
    [[ -x "$bin" ]] || bin="$(command -v s3s-fs || true)"
    [[ -n "$bin" ]] || die "s3s-fs not found in $tools_dir/bin; run infra/local/install-deps.sh"
    port_open "$S3_PORT" && die "port $S3_PORT is in use by another process"
    mkdir -p "$local_dir/s3" "$run" "$logs"
    log "starting s3s-fs on 127.0.0.1:$S3_PORT"
    setsid "$bin" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" \
        --secret-key "$S3_SECRET_KEY" "$local_dir/s3" </dev/null >>"$logs/s3s-fs.log" 2>&1 &
    echo $! >"$run/s3s-fs.pid"
    wait_for "s3s-fs" s3_ready
}

# --- S3 gateway (coderun-s3-gateway) -----------------------------------------------------------

gateway_ready() {
    local code
    code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$S3_GATEWAY/" 2>/dev/null || true)"
    [[ "$code" =~ ^[1-5][0-9][0-9]$ && "$code" != 502 ]]
}

start_gateway() {
    [[ -n "${CODERUN_S3_GATEWAY:-}" ]] || return 0
    if pid_alive "$run/s3-gateway.pid" coderun-s3-gateway; then
        log "coderun-s3-gateway already running"
        return
    fi
    [[ -x "$CODERUN_S3_GATEWAY" ]] || die "CODERUN_S3_GATEWAY=$CODERUN_S3_GATEWAY is not an executable"
    port_open "$S3_GATEWAY_PORT" && die "port $S3_GATEWAY_PORT is in use by another process"
    mkdir -p "$run" "$logs"
    log "starting coderun-s3-gateway on 127.0.0.1:$S3_GATEWAY_PORT (origin $APP_ORIGIN)"
    setsid "$CODERUN_S3_GATEWAY" --listen "127.0.0.1:$S3_GATEWAY_PORT" --upstream "127.0.0.1:$S3_PORT" \
        --origin "$APP_ORIGIN" </dev/null >>"$logs/s3-gateway.log" 2>&1 &
    echo $! >"$run/s3-gateway.pid"
    wait_for "coderun-s3-gateway" gateway_ready
}

# --- common -----------------------------------------------------------------------------------

wait_for() { # label check-function
    local i
    for ((i = 0; i < 300; i++)); do
        "$2" && return 0
        sleep 0.1
    done
    die "$1 did not answer within 30 s; see $logs/"
}

print_urls() {
    cat <<URLS
stack: Postgres  $DATABASE_URL
stack: Redis     $REDIS_URL
stack: S3        $S3_ENDPOINT  (access key $S3_ACCESS_KEY, secret key $S3_SECRET_KEY)
stack: S3 gateway $S3_GATEWAY  (CORS for $APP_ORIGIN; presigned URLs point here when it runs)
stack: logs      $logs/
URLS
}

cmd_env() {
    cat <<ENV
export CODERUN__LOCAL_STACK=true
export CODERUN__DATABASE__URL=$DATABASE_URL
export CODERUN__REDIS__URL=$REDIS_URL
export CODERUN__STORAGE__ENDPOINT=$S3_ENDPOINT
export CODERUN__STORAGE__ACCESS_KEY=$S3_ACCESS_KEY
export CODERUN__STORAGE__SECRET_KEY=$S3_SECRET_KEY
export CODERUN__STORAGE__BUCKET=coderun
export CODERUN__STORAGE__CREATE_BUCKET=true
export CODERUN__HTTP__BIND=127.0.0.1:8080
ENV
    # Presigned URLs (browser uploads of dataset parts) go through the gateway when it runs.
    if pid_alive "$run/s3-gateway.pid" coderun-s3-gateway; then
        echo "export CODERUN__STORAGE__PUBLIC_ENDPOINT=$S3_GATEWAY"
    fi
}

cmd_status() {
    local ok=0
    if pg_running && pg_ready; then
        log "postgres  up    $DATABASE_URL"
    else
        log "postgres  down"; ok=1
    fi
    if pid_alive "$run/redis.pid" redis-server && redis_ready; then
        log "redis     up    $REDIS_URL (pid $(cat "$run/redis.pid"))"
    else
        log "redis     down"; ok=1
    fi
    if pid_alive "$run/s3s-fs.pid" s3s-fs && s3_ready; then
        log "s3s-fs    up    $S3_ENDPOINT (pid $(cat "$run/s3s-fs.pid"))"
    else
        log "s3s-fs    down"; ok=1
    fi
    if pid_alive "$run/s3-gateway.pid" coderun-s3-gateway && gateway_ready; then
        log "gateway   up    $S3_GATEWAY (pid $(cat "$run/s3-gateway.pid"))"
    elif [[ -n "${CODERUN_S3_GATEWAY:-}" ]]; then
        log "gateway   down"; ok=1
    fi
    return "$ok"
}

case "${1:-}" in
start)
    start_postgres
    start_redis
    start_s3
    start_gateway
    print_urls
    ;;
stop)
    stop_pidfile "$run/s3-gateway.pid" coderun-s3-gateway coderun-s3-gateway
    stop_pidfile "$run/s3s-fs.pid" s3s-fs s3s-fs
    stop_pidfile "$run/redis.pid" redis-server redis
    stop_postgres
    ;;
status) cmd_status ;;
env) cmd_env ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
