//! Real Postgres, Redis and S3 (`s3s-fs`) servers for tests.
//!
//! [`TestServers::get`] starts one set per test process, on free loopback ports, with data in a
//! fresh temporary folder (`<temp>/coderun-test-<pid>-<random>`); every test in the process
//! shares it and makes its own database, bucket or key prefix.
//!
//! Rust never runs static destructors, so the servers are not stopped by a `Drop`: each one runs
//! under a small `sh` watchdog whose standard input is a pipe from this process. The write end
//! stays in a static for the life of the process; when the process ends, however it ends, the
//! kernel closes the pipe, the watchdog's `read` returns, and it stops its server and removes the
//! server's data (set `CODERUN_TEST_KEEP_DATA=1` to keep it for a post-mortem).
//!
//! Binaries are looked up as follows (see `infra/local/install-deps.sh`, which installs them):
//! - Postgres: `$CODERUN_PG_BINDIR`, `pg_config --bindir`, the highest
//!   `/usr/lib/postgresql/*/bin`, then `PATH`. initdb and postgres refuse to run as root: when
//!   the tests run as root, they run as `postgres` (or `nobody`) through `setpriv`.
//! - Redis: `$CODERUN_REDIS_SERVER`, then `redis-server` on `PATH`.
//! - S3: `$CODERUN_S3S_FS`, `$CODERUN_TOOLS_DIR/bin/s3s-fs`, `<workspace>/.tools/bin/s3s-fs`,
//!   then `PATH`.
//!
//! A test may also take a server down and bring it back on the same port with the same data
//! ([`TestServers::kill9`], [`TestServers::restart`]) to play an outage: the servers are shared
//! by the whole test process, so such tests live in a test binary of their own. Redis keeps an
//! append-only file flushed every second, as production must (see `docs/decisions.md`), so a
//! restart loses at most the last second.
//!
//! Everything here is blocking and std-only, so it may be called from inside a tokio test.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The S3 access key of the test server.
pub const S3_ACCESS_KEY: &str = "coderun";
/// The S3 secret key of the test server.
pub const S3_SECRET_KEY: &str = "coderun-secret";

/// How long each server gets to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a server whose start failed (say, its port was taken meanwhile) is tried again.
const START_ATTEMPTS: u32 = 3;

/// The running test servers; see the module documentation.
#[derive(Debug)]
pub struct TestServers {
    /// Admin URL to the `postgres` database, e.g. `postgres://coderun@127.0.0.1:PORT/postgres`
    /// (user `coderun` is a superuser; trust authentication).
    pub postgres_url: String,
    /// e.g. `redis://127.0.0.1:PORT`
    pub redis_url: String,
    /// e.g. `http://127.0.0.1:PORT` (path-style buckets)
    pub s3_endpoint: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
}

/// The servers, or why they could not be started (kept so later callers fail fast too).
static SERVERS: OnceLock<Result<TestServers, String>> = OnceLock::new();
/// Every watchdog started by this process; holding them keeps their servers alive.
static WATCHDOGS: Mutex<Vec<Watchdog>> = Mutex::new(Vec::new());
/// The temporary folder holding the servers' data.
static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();
/// How to start each server again on its port: see [`TestServers::restart`].
static RESTARTS: Mutex<Vec<Restart>> = Mutex::new(Vec::new());

/// One of the test servers, to take down and bring back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Redis,
    S3,
}

type StartFn = Arc<dyn Fn(u16, &Path) -> Result<u32, String> + Send + Sync>;

struct Restart {
    server: Server,
    port: u16,
    pid: u32,
    dir: PathBuf,
    start: StartFn,
    ready: fn(u16) -> bool,
    starts: u32,
}

impl TestServers {
    /// The servers of this process, started on the first call (blocking, a few seconds).
    ///
    /// Panics with the reason and the server's log tail when a server cannot be started.
    pub fn get() -> &'static TestServers {
        match SERVERS.get_or_init(start_all) {
            Ok(servers) => servers,
            Err(message) => panic!("test servers unavailable: {message}"),
        }
    }

    /// Kills `server` with SIGKILL, as a crash would, and waits until it is gone. Its port
    /// refuses connections until [`restart`](Self::restart).
    pub fn kill9(&self, server: Server) {
        let restarts = RESTARTS.lock().unwrap_or_else(|e| e.into_inner());
        let r = restarts
            .iter()
            .find(|r| r.server == server)
            .expect("the servers were started");
        let _ = Command::new("kill")
            .args(["-9", &r.pid.to_string()])
            .status();
        let deadline = Instant::now() + READY_TIMEOUT;
        while process_alive(r.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `server` again on the same port with the same data (killing it first if it
    /// still runs), and waits until it answers. Postgres recovers from its crash first.
    pub fn restart(&self, server: Server) -> Result<(), String> {
        self.kill9(server);
        let mut restarts = RESTARTS.lock().unwrap_or_else(|e| e.into_inner());
        let r = restarts
            .iter_mut()
            .find(|r| r.server == server)
            .expect("the servers were started");
        let deadline = Instant::now() + 2 * READY_TIMEOUT;
        loop {
            r.starts += 1;
            let log = r
                .dir
                .join(format!("{server:?}-restart-{}.log", r.starts).to_lowercase());
            let pid = (r.start)(r.port, &log)?;
            r.pid = pid;
            loop {
                if (r.ready)(r.port) {
                    return Ok(());
                }
                if !process_alive(pid) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{server:?} did not come back on port {}:\n{}",
                        r.port,
                        log_tail(&log)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // It exited: Postgres refuses to start while the killed postmaster's backends
            // still hold its shared memory; they notice their parent died within moments.
            if Instant::now() > deadline {
                return Err(format!(
                    "{server:?} keeps exiting on restart:\n{}",
                    log_tail(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// URL to database `db` on the test Postgres server, as user `coderun`.
    pub fn database_url(&self, db: &str) -> String {
        let base = self
            .postgres_url
            .rsplit_once('/')
            .map_or(self.postgres_url.as_str(), |(base, _)| base);
        format!("{base}/{db}")
    }
}

/// A server running under an `sh` watchdog; see the module documentation.
#[cfg_attr(not(test), allow(dead_code))] // the fields are read by the tests below
struct Watchdog {
    name: &'static str,
    server_pid: u32,
    log: PathBuf,
    /// The write end of the watchdog's stdin: closing it stops the server.
    _stdin: ChildStdin,
    _child: Child,
}

/// Runs the server given as arguments with output to the log file, prints its pid, and stops it
/// with the given signal once stdin reaches end-of-file (this process has gone), then removes
/// the server's data folder and, when it is the last one, the (then empty) top folder. A server
/// that dies before (a test killed it) is reaped at once — a zombie would still count as a
/// running postmaster to a restarted Postgres — and its data stays until this process ends.
const WATCHDOG_SCRIPT: &str = r#"
log=$1; sig=$2; data=$3; top=$4; keep=$5; shift 5
exec 3<&0
"$@" </dev/null >"$log" 2>&1 &
pid=$!
echo "$pid"
( read _ignored <&3; kill -s "$sig" "$pid" 2>/dev/null ) &
stopper=$!
wait "$pid"
kill "$stopper" 2>/dev/null
read _ignored <&3
if [ "$keep" != 1 ]; then
    rm -rf "$data"
    rmdir "$top" 2>/dev/null
fi
exit 0
"#;

fn start_all() -> Result<TestServers, String> {
    let pg = find_postgres()?;
    let redis = find_redis()?;
    let s3s = find_s3s_fs()?;
    let run_as = unprivileged_user()?;

    let top = make_data_dir()?;
    let _ = DATA_DIR.set(top.clone());

    // Redis and S3 start in the background while initdb runs.
    let redis_dir = top.join("redis");
    fs::create_dir(&redis_dir).map_err(|e| format!("create {}: {e}", redis_dir.display()))?;
    let redis_start: StartFn = Arc::new({
        let (redis_dir, top) = (redis_dir.clone(), top.clone());
        move |port: u16, log: &Path| {
            let mut cmd = vec![redis.display().to_string()];
            cmd.extend(
                [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    // As production: an append-only file flushed every second.
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--dir",
                    &redis_dir.display().to_string(),
                ]
                .map(str::to_owned),
            );
            spawn_watchdog("redis", cmd, "TERM", log, &redis_dir, &top)
        }
    });
    let redis_pending = first_attempt("redis", &redis_dir, &*redis_start)?;

    let s3_dir = top.join("s3");
    let s3_data = s3_dir.join("data");
    fs::create_dir_all(&s3_data).map_err(|e| format!("create {}: {e}", s3_data.display()))?;
    let s3_start: StartFn = Arc::new({
        let (s3_dir, s3_data, top) = (s3_dir.clone(), s3_data.clone(), top.clone());
        move |port: u16, log: &Path| {
            let mut cmd = vec![s3s.display().to_string()];
            cmd.extend(
                [
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--access-key",
                    S3_ACCESS_KEY,
                    "--secret-key",
                    S3_SECRET_KEY,
                    &s3_data.display().to_string(),
                ]
                .map(str::to_owned),
            );
            spawn_watchdog("s3s-fs", cmd, "TERM", log, &s3_dir, &top)
        }
    });
    let s3_pending = first_attempt("s3s-fs", &s3_dir, &*s3_start)?;

    // Postgres: initdb (as the unprivileged user when root), then the server.
    let pg_dir = top.join("postgres");
    let pg_data = pg_dir.join("data");
    let pg_sock = pg_dir.join("sock");
    for dir in [&pg_dir, &pg_data, &pg_sock] {
        fs::create_dir(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    fs::set_permissions(&pg_data, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", pg_data.display()))?;
    if let Some(user) = &run_as {
        for dir in [&pg_data, &pg_sock] {
            chown(dir, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("chown {} to {}: {e}", dir.display(), user.name))?;
        }
    }
    let mut initdb = as_user(&run_as);
    initdb.push(pg.join("initdb").display().to_string());
    initdb.extend(
        [
            "-D",
            &pg_data.display().to_string(),
            "-A",
            "trust",
            "-U",
            "coderun",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        .map(str::to_owned),
    );
    // Under a watchdog too: should this process die midway, initdb is stopped and its files go.
    let initdb_log = pg_dir.join("initdb.log");
    let initdb_line = initdb.join(" ");
    let initdb_pid = spawn_watchdog("initdb", initdb, "TERM", &initdb_log, &pg_dir, &top)?;
    let deadline = Instant::now() + 2 * READY_TIMEOUT;
    while process_alive(initdb_pid) {
        if Instant::now() > deadline {
            return Err(format!(
                "initdb did not finish within {:?}: {initdb_line}\n{}",
                2 * READY_TIMEOUT,
                log_tail(&initdb_log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // initdb empties the data folder when it fails.
    if !pg_data.join("PG_VERSION").is_file() {
        return Err(format!(
            "initdb failed: {initdb_line}\n{}{}\n{KEEP_HINT}",
            log_tail(&initdb_log),
            match &run_as {
                Some(user) => format!(
                    "\n(initdb ran as user {}: every folder above {} must be searchable by it)",
                    user.name,
                    top.display()
                ),
                None => String::new(),
            }
        ));
    }
    // A Unix socket path is limited to ~107 bytes; past that, TCP only.
    let sock_dir = pg_sock.display().to_string();
    let sock_dir = if sock_dir.len() < 90 {
        sock_dir
    } else {
        String::new()
    };
    let pg_start: StartFn = Arc::new({
        let (pg_dir, pg_data, top, run_as) =
            (pg_dir.clone(), pg_data.clone(), top.clone(), run_as.clone());
        move |port: u16, log: &Path| {
            let mut cmd = as_user(&run_as);
            cmd.push(pg.join("postgres").display().to_string());
            cmd.extend(
                [
                    "-D",
                    &pg_data.display().to_string(),
                    "-p",
                    &port.to_string(),
                    "-k",
                    &sock_dir,
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    // Commits reach the OS before they are acknowledged, so a test that
                    // kills the server with -9 loses no acknowledged write (fsync is off:
                    // the OS itself never crashes in a test).
                    "-c",
                    "synchronous_commit=on",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ]
                .map(str::to_owned),
            );
            // SIGINT: Postgres's fast shutdown.
            spawn_watchdog("postgres", cmd, "INT", log, &pg_dir, &top)
        }
    });
    let pg_pending = first_attempt("postgres", &pg_dir, &*pg_start)?;

    let mut restarts = Vec::new();
    for (server, pending, dir, start, ready) in [
        (
            Server::Redis,
            redis_pending,
            &redis_dir,
            redis_start,
            redis_ping as fn(u16) -> bool,
        ),
        (
            Server::S3,
            s3_pending,
            &s3_dir,
            s3_start,
            http_answers as fn(u16) -> bool,
        ),
        (
            Server::Postgres,
            pg_pending,
            &pg_dir,
            pg_start,
            postgres_accepts as fn(u16) -> bool,
        ),
    ] {
        let port = until_ready(pending, dir, &*start, ready)?;
        let name = match server {
            Server::Redis => "redis",
            Server::S3 => "s3s-fs",
            Server::Postgres => "postgres",
        };
        let pid = WATCHDOGS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|w| w.name == name)
            .map_or(0, |w| w.server_pid);
        restarts.push(Restart {
            server,
            port,
            pid,
            dir: dir.clone(),
            start,
            ready,
            starts: 0,
        });
    }
    let port_of = |server| {
        restarts
            .iter()
            .find(|r: &&Restart| r.server == server)
            .map(|r| r.port)
            .unwrap_or(0)
    };
    let (redis_port, s3_port, pg_port) = (
        port_of(Server::Redis),
        port_of(Server::S3),
        port_of(Server::Postgres),
    );
    *RESTARTS.lock().unwrap_or_else(|e| e.into_inner()) = restarts;

    Ok(TestServers {
        postgres_url: format!("postgres://coderun@127.0.0.1:{pg_port}/postgres"),
        redis_url: format!("redis://127.0.0.1:{redis_port}"),
        s3_endpoint: format!("http://127.0.0.1:{s3_port}"),
        s3_access_key: S3_ACCESS_KEY.to_owned(),
        s3_secret_key: S3_SECRET_KEY.to_owned(),
    })
}

const KEEP_HINT: &str = "(the servers' folders are removed when the test process exits; set CODERUN_TEST_KEEP_DATA=1 to keep them)";

/// A server started but not yet known to answer.
struct Pending {
    name: &'static str,
    port: u16,
    pid: u32,
    log: PathBuf,
    attempt: u32,
}

fn first_attempt(
    name: &'static str,
    dir: &Path,
    start: impl Fn(u16, &Path) -> Result<u32, String>,
) -> Result<Pending, String> {
    attempt(name, dir, 1, start)
}

fn attempt(
    name: &'static str,
    dir: &Path,
    attempt: u32,
    start: impl Fn(u16, &Path) -> Result<u32, String>,
) -> Result<Pending, String> {
    let port = free_port()?;
    let log = dir.join(format!("{name}-{attempt}.log"));
    let pid = start(port, &log)?;
    Ok(Pending {
        name,
        port,
        pid,
        log,
        attempt,
    })
}

/// Waits until `ready` says the server answers, starting it again on a fresh port when it died
/// (another process may have taken the port between our probe and its bind).
fn until_ready(
    mut pending: Pending,
    dir: &Path,
    start: impl Fn(u16, &Path) -> Result<u32, String>,
    ready: fn(u16) -> bool,
) -> Result<u16, String> {
    loop {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready(pending.port) {
                return Ok(pending.port);
            }
            if !process_alive(pending.pid) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} (pid {}) did not answer on 127.0.0.1:{} within {:?}; log {}:\n{}\n{KEEP_HINT}",
                    pending.name,
                    pending.pid,
                    pending.port,
                    READY_TIMEOUT,
                    pending.log.display(),
                    log_tail(&pending.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if pending.attempt >= START_ATTEMPTS {
            return Err(format!(
                "{} exited during start-up ({} attempts); log {}:\n{}\n{KEEP_HINT}",
                pending.name,
                pending.attempt,
                pending.log.display(),
                log_tail(&pending.log)
            ));
        }
        pending = attempt(pending.name, dir, pending.attempt + 1, &start)?;
    }
}

/// Starts `cmd` under a watchdog (see [`WATCHDOG_SCRIPT`]) and returns the server's pid.
fn spawn_watchdog(
    name: &'static str,
    cmd: Vec<String>,
    signal: &str,
    log: &Path,
    data: &Path,
    top: &Path,
) -> Result<u32, String> {
    let keep = if std::env::var_os("CODERUN_TEST_KEEP_DATA").is_some_and(|v| v == "1") {
        "1"
    } else {
        "0"
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("coderun-test-watchdog")
        .arg(log)
        .arg(signal)
        .arg(data)
        .arg(top)
        .arg(keep)
        .args(&cmd)
        .current_dir(top)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group: Ctrl-C on `cargo test` ends this process, and the watchdog
        // then stops the server in order rather than the signal killing it midway.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start sh for {name}: {e}"))?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading the pid of {name}: {e}"))?;
    let server_pid: u32 = line
        .trim()
        .parse()
        .map_err(|_| format!("watchdog of {name} printed {line:?} instead of a pid"))?;
    WATCHDOGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Watchdog {
            name,
            server_pid,
            log: log.to_owned(),
            _stdin: stdin,
            _child: child,
        });
    Ok(server_pid)
}

// --- readiness probes ---------------------------------------------------------------------------

fn connect(port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    Some(stream)
}

/// `PING` answered with `+PONG`.
fn redis_ping(port: u16) -> bool {
    let Some(mut stream) = connect(port) else {
        return false;
    };
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Any HTTP response to `GET /`.
fn http_answers(port: u16) -> bool {
    let Some(mut stream) = connect(port) else {
        return false;
    };
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// A real Postgres start-up as user `coderun` to database `postgres` gets AuthenticationOk
/// (while the server is still starting, it answers with an error instead).
fn postgres_accepts(port: u16) -> bool {
    let Some(mut stream) = connect(port) else {
        return false;
    };
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
    for part in ["user", "coderun", "database", "postgres", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    if stream.write_all(&message).is_err() {
        return false;
    }
    let mut reply = [0u8; 9]; // 'R', length 8, code 0 = AuthenticationOk
    let ok = stream.read_exact(&mut reply).is_ok()
        && reply[0] == b'R'
        && reply[5..9] == 0u32.to_be_bytes();
    let _ = stream.write_all(b"X\0\0\0\x04"); // Terminate
    ok
}

// --- processes, users, files --------------------------------------------------------------------

/// True while `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ..."; comm may hold spaces and parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X' | 'x'))
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn make_data_dir() -> Result<PathBuf, String> {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let dir = std::env::temp_dir().join(format!(
        "coderun-test-{}-{:016x}",
        std::process::id(),
        hasher.finish()
    ));
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    // Searchable by the unprivileged user Postgres runs as.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    Ok(dir)
}

fn log_tail(log: &Path) -> String {
    match fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

#[derive(Clone)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

/// When this process runs as root: the user initdb and postgres run as instead.
fn unprivileged_user() -> Result<Option<User>, String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok());
    if euid != Some(0) {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(|e| format!("read /etc/passwd: {e}"))?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4
                && fields[0] == wanted
                && let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse())
            {
                return Ok(Some(User {
                    name: wanted.to_owned(),
                    uid,
                    gid,
                }));
            }
        }
    }
    Err(
        "running as root, and neither user `postgres` nor `nobody` exists to run Postgres as"
            .into(),
    )
}

/// The command prefix that runs a program as `user` (nothing when not root).
fn as_user(user: &Option<User>) -> Vec<String> {
    match user {
        Some(user) => vec![
            "setpriv".to_owned(),
            format!("--reuid={}", user.uid),
            format!("--regid={}", user.gid),
            "--clear-groups".to_owned(),
            "--".to_owned(),
        ],
        None => Vec::new(),
    }
}

// --- finding the binaries -----------------------------------------------------------------------

const INSTALL_HINT: &str = "run `infra/local/install-deps.sh` (or `just test`, which runs it)";

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn workspace_root() -> PathBuf {
    let tests_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests_crate.parent().unwrap_or(tests_crate).to_owned()
}

/// The folder holding `initdb` and `postgres`.
fn find_postgres() -> Result<PathBuf, String> {
    let has_server =
        |dir: &Path| is_executable(&dir.join("postgres")) && is_executable(&dir.join("initdb"));
    if let Some(dir) = env_path("CODERUN_PG_BINDIR") {
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "CODERUN_PG_BINDIR={} holds no initdb and postgres",
                dir.display()
            ))
        };
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    if let Some(postgres) = on_path("postgres")
        && let Some(dir) = postgres.parent().filter(|d| has_server(d))
    {
        return Ok(dir.to_owned());
    }
    Err(format!(
        "PostgreSQL server binaries (initdb, postgres) not found; {INSTALL_HINT}"
    ))
}

fn find_redis() -> Result<PathBuf, String> {
    env_path("CODERUN_REDIS_SERVER")
        .or_else(|| on_path("redis-server"))
        .ok_or_else(|| format!("redis-server not found; {INSTALL_HINT}"))
}

fn find_s3s_fs() -> Result<PathBuf, String> {
    if let Some(path) = env_path("CODERUN_S3S_FS") {
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "CODERUN_S3S_FS={} is not an executable",
                path.display()
            ))
        };
    }
    env_path("CODERUN_TOOLS_DIR")
        .map(|dir| dir.join("bin/s3s-fs"))
        .filter(|p| is_executable(p))
        .or_else(|| Some(workspace_root().join(".tools/bin/s3s-fs")).filter(|p| is_executable(p)))
        .or_else(|| on_path("s3s-fs"))
        .ok_or_else(|| {
            format!(
                "s3s-fs (the S3 server) not found in $CODERUN_TOOLS_DIR/bin, {}/.tools/bin or PATH; {INSTALL_HINT}",
                workspace_root().display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    #[test]
    fn database_url_replaces_the_database() {
        let servers = TestServers {
            postgres_url: "postgres://coderun@127.0.0.1:5555/postgres".into(),
            redis_url: String::new(),
            s3_endpoint: String::new(),
            s3_access_key: String::new(),
            s3_secret_key: String::new(),
        };
        assert_eq!(
            servers.database_url("t1"),
            "postgres://coderun@127.0.0.1:5555/t1"
        );
    }

    #[tokio::test]
    async fn servers_answer() {
        let servers = TestServers::get();
        assert!(
            std::ptr::eq(servers, TestServers::get()),
            "one set per process"
        );

        // Postgres: a real connection, and the admin may create a database and use it.
        let mut admin = sqlx::PgConnection::connect(&servers.postgres_url)
            .await
            .unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(one, 1);
        let db = format!("servers_smoke_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut conn = sqlx::PgConnection::connect(&servers.database_url(&db))
            .await
            .unwrap();
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(name, db);

        // Redis: PING → +PONG.
        let port: u16 = servers
            .redis_url
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            redis_ping(port),
            "redis at {} does not answer PING",
            servers.redis_url
        );

        // S3: an HTTP response (an unsigned request is refused, but by an S3 server).
        let response = reqwest::get(&servers.s3_endpoint).await.unwrap();
        let body = response.text().await.unwrap();
        assert!(body.contains("<Error>"), "unexpected S3 answer: {body}");
    }

    /// Run by `servers_stop_when_the_test_process_exits` in a child process.
    #[test]
    #[ignore = "helper: run by servers_stop_when_the_test_process_exits in a child process"]
    fn child_process_starts_servers() {
        if std::env::var_os("CODERUN_SERVERS_CHILD").is_none() {
            return;
        }
        TestServers::get();
        let pids: Vec<String> = WATCHDOGS
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.name != "initdb")
            .map(|w| format!("{}={}", w.name, w.server_pid))
            .collect();
        println!(
            "CODERUN_SERVERS dir={} {}",
            DATA_DIR.get().unwrap().display(),
            pids.join(" ")
        );
        for watchdog in WATCHDOGS
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.name != "initdb")
        {
            assert!(
                process_alive(watchdog.server_pid),
                "{} died: {}",
                watchdog.name,
                watchdog.log.display()
            );
        }
    }

    #[test]
    fn servers_stop_when_the_test_process_exits() {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "servers::tests::child_process_starts_servers",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CODERUN_SERVERS_CHILD", "1")
            .env_remove("CODERUN_TEST_KEEP_DATA")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("CODERUN_SERVERS ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("child printed no servers: {stdout}"));
        let mut fields = line.split(' ');
        let dir = fields
            .next()
            .unwrap()
            .strip_prefix("dir=")
            .unwrap()
            .to_owned();
        let pids: Vec<(String, u32)> = fields
            .map(|f| {
                let (name, pid) = f.split_once('=').unwrap();
                (name.to_owned(), pid.parse().unwrap())
            })
            .collect();
        assert_eq!(pids.len(), 3, "{line}");

        // The child has exited: every server, its watchdog and its data go away.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let alive: Vec<&(String, u32)> =
                pids.iter().filter(|(_, pid)| process_alive(*pid)).collect();
            let strays = processes_mentioning(&dir);
            let dir_left = Path::new(&dir).exists();
            if alive.is_empty() && strays.is_empty() && !dir_left {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after the child exited: servers alive {alive:?}, processes {strays:?}, data dir left: {dir_left}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Live processes whose command line contains `needle`.
    fn processes_mentioning(needle: &str) -> Vec<String> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .filter_map(|e| {
                let cmdline = fs::read(e.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline
                    .contains(needle)
                    .then(|| format!("{}: {cmdline}", e.file_name().to_string_lossy()))
            })
            .collect()
    }
}
