//! `coderun-e2e-stack`: a whole coderun platform in one process for the web app's end-to-end
//! tests — the harness's real Postgres, Redis and S3 servers on free ports, a migrated database
//! with seeded users, the local S3 gateway (`s3_gateway`: presigned URLs are signed for it, and it
//! answers the browser's CORS preflights for the app's origin), the real functions router on a free loopback port (serving the built app
//! when `--web-dir` names it) and one real worker with the local executor.
//!
//! The protocol, on standard input and output:
//! - once ready it prints exactly one JSON line,
//!   `{"base_url":"http://127.0.0.1:PORT","users":{"admin":"admin","teacher":"teacher","alice":"alice","bob":"bob"}}`
//!   (each user's password is their name; admin is an admin, teacher a teacher, alice and bob
//!   students);
//! - then it reads one command a line and answers one line, `ok` or `error: …`:
//!   `api-stop` closes the API's listener and drops every open connection (streams included),
//!   as a crashed API would, while the databases and the worker keep running; `api-start`
//!   serves again on the same port. Both are idempotent.
//! - It exits, taking every server with it, when standard input closes or on SIGTERM/SIGINT.
//!
//! Logs go to standard error; standard output carries only the protocol.

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use coderun_functions::{app, state::AppState};
use coderun_shared::config::Settings;
use coderun_shared::domain::{Role, Username};
use coderun_shared::users;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use crate::app::{fresh_bucket, fresh_database, test_settings};
use crate::s3_gateway;
use crate::servers::TestServers;

/// The seeded users: (username = password, role). `admin` is seeded by the local stack itself.
pub const USERS: [(&str, Role); 4] = [
    ("admin", Role::Admin),
    ("teacher", Role::Teacher),
    ("alice", Role::Student),
    ("bob", Role::Student),
];

#[derive(Debug, clap::Parser)]
#[command(
    name = "coderun-e2e-stack",
    about = "A whole coderun platform on free ports for end-to-end tests; prints one JSON line \
             when ready, then obeys `api-stop` / `api-start` on stdin; exits when stdin closes"
)]
pub struct Options {
    /// Serve the built web app from this folder (index.html + assets/) at `/`.
    #[arg(long)]
    pub web_dir: Option<PathBuf>,
}

/// The line printed once the stack is ready.
#[derive(Debug, Serialize)]
struct Ready {
    base_url: String,
    users: ReadyUsers,
}

/// Usernames to passwords, in the order the protocol names them.
#[derive(Debug, Serialize)]
struct ReadyUsers {
    admin: &'static str,
    teacher: &'static str,
    alice: &'static str,
    bob: &'static str,
}

/// The API served on `address`; stopped and started again on the same port on request.
struct Api {
    address: SocketAddr,
    router: Router,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Api {
    /// Listens on `address` (port 0 picks a free one) and serves.
    async fn start(&mut self) -> anyhow::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let listener = listen(self.address).await?;
        self.address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(serve(listener, self.router.clone(), stopped));
        self.running = Some((stop, server));
        Ok(())
    }

    /// Closes the listener and drops every connection; returns once they are gone.
    async fn stop(&mut self) {
        if let Some((stop, server)) = self.running.take() {
            let _ = stop.send(());
            let _ = server.await;
        }
    }
}

/// Binds with `SO_REUSEADDR`, so the same port can be bound again right after a stop even with
/// connections of the previous listener in TIME_WAIT.
async fn listen(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(address)
        .with_context(|| format!("cannot bind {address}"))?;
    Ok(socket.listen(1024)?)
}

/// Serves `router` on `listener` until `stop`, then drops the listener and aborts every
/// connection at once — unlike a graceful shutdown, which would wait for endless log streams.
async fn serve(listener: TcpListener, router: Router, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = TowerToHyperService::new(router.clone());
                    connections.spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Logs to standard error (standard output carries the protocol).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,aws_config=warn,aws_smithy_runtime=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Standard input's lines, read by a thread of their own (blocking reads); the channel closes
/// at end of input.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<std::io::Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let failed = line.is_err();
            if tx.send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}

/// Prints one protocol line and flushes it.
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Starts everything, prints the ready line, obeys commands until stdin closes or a signal.
pub async fn run(options: Options) -> anyhow::Result<()> {
    init_logging();
    let mut overrides = Vec::new();
    if let Some(dir) = &options.web_dir {
        let dir =
            std::fs::canonicalize(dir).with_context(|| format!("--web-dir {}", dir.display()))?;
        overrides.push(("http.web_dir", dir.display().to_string()));
    }

    tokio::task::spawn_blocking(TestServers::get)
        .await
        .map_err(|_| anyhow::anyhow!("the test servers could not be started (see above)"))?;
    let database = fresh_database().await;
    let name = format!("e2e-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let work_dir = std::env::temp_dir().join(format!("coderun-{name}-runs"));
    // The API's port is picked now: the S3 gateway allows the app's origin (the API serves the
    // app) and presigned URLs are signed for the gateway (`storage.public_endpoint`), so the
    // browser PUTs dataset parts straight to S3 through it.
    let api_address = listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?
        .local_addr()?;
    let upstream: SocketAddr = TestServers::get()
        .s3_endpoint
        .trim_start_matches("http://")
        .parse()
        .context("the test S3 server's address")?;
    let gateway = s3_gateway::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        s3_gateway::Config {
            upstream,
            origins: vec![format!("http://{api_address}")],
        },
    )
    .await?;
    let mut all = test_settings(&database, &fresh_bucket());
    all.push(("storage.public_endpoint", gateway.url()));
    all.extend([
        ("worker.name", name.clone()),
        ("worker.work_dir", work_dir.display().to_string()),
        ("worker.shutdown_grace_seconds", "2".to_owned()),
    ]);
    all.extend(overrides);
    let settings = Settings::with_overrides(all)?;

    let state = AppState::build(settings.clone()).await?;
    for (username, role) in USERS {
        let hash = state.hash_password(username.to_owned()).await?;
        let parsed = Username::parse(username).map_err(|e| anyhow::anyhow!(e))?;
        users::ensure(&state.db, &parsed, &hash, role).await?;
    }

    // The worker's preflight wants every language's runtime built (cached after the first).
    if settings.worker.executor == coderun_shared::config::ExecutorKind::Local {
        let mut runtimes: Vec<&str> = settings
            .languages
            .values()
            .map(|l| l.runtime.as_str())
            .collect();
        runtimes.sort();
        runtimes.dedup();
        coderun_worker::sandbox::ensure_built(&runtimes).map_err(|e| anyhow::anyhow!(e))?;
    }
    let ctx = coderun_worker::Context::build(settings).await?;
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let mut worker = tokio::spawn(coderun_worker::run(ctx, async {
        let _ = worker_stopped.await;
    }));

    let mut api = Api {
        address: api_address,
        router: app::router(state),
        running: None,
    };
    api.start().await?;
    let ready = Ready {
        base_url: format!("http://{}", api.address),
        users: ReadyUsers {
            admin: "admin",
            teacher: "teacher",
            alice: "alice",
            bob: "bob",
        },
    };
    say(&serde_json::to_string(&ready)?)?;
    tracing::info!(base_url = %ready.base_url, s3_gateway = %gateway.url(), worker = %name, "e2e stack ready");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut lines = stdin_lines();
    let outcome = loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(Ok(line)) => {
                    let answer = match line.trim() {
                        "" => continue,
                        "api-stop" => {
                            api.stop().await;
                            "ok".to_owned()
                        }
                        "api-start" => match api.start().await {
                            Ok(()) => "ok".to_owned(),
                            Err(e) => format!("error: {e:#}"),
                        },
                        other => format!("error: unknown command `{other}` (api-stop, api-start)"),
                    };
                    say(&answer)?;
                }
                None => break Ok(()),
                Some(Err(e)) => break Err(anyhow::anyhow!("reading stdin: {e}")),
            },
            _ = terminate.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            result = &mut worker => {
                break Err(match result {
                    Ok(Ok(())) => anyhow::anyhow!("the worker stopped by itself"),
                    Ok(Err(e)) => e.context("the worker failed"),
                    Err(e) => anyhow::anyhow!("the worker panicked: {e}"),
                });
            }
        }
    };

    tracing::info!("e2e stack stopping");
    api.stop().await;
    let _ = stop_worker.send(());
    if !worker.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut worker).await;
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    // The servers stop when this process exits: their watchdogs see its pipe close.
    outcome
}
