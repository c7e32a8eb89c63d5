//! Floors for `just bench`: the same measures with nothing of coderun's in the way, taken in the
//! same run on the same machine, so each figure reads against what the machine itself allows.
//!
//! - `redis-benchmark` XADD: the stream the burst ends in, at the burst's connection count;
//! - a bare insert of one row per request through an HTTP server built like the API's (axum on
//!   tokio, a Postgres pool of the API's size), at the burst's and the files suite's client
//!   counts;
//! - a stream hand-off: XADD → a blocked XREADGROUP wakes → one single-row UPDATE, what any
//!   dispatch must do at least;
//! - the bare sandbox: bubblewrap with the run's mounts (the Python runtime's `/usr` and `/etc`,
//!   proc, dev, a tmpfs, the code folder) starting `/usr/bin/python3 -c pass`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use fred::prelude::*;
use fred::types::streams::XReadResponse;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bench::percentile;

/// Rate and latency percentiles of a load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// `redis-benchmark` XADDs to a scratch key of the stack's Redis from `clients` connections.
pub async fn xadd(
    redis_url: &str,
    prefix: &str,
    clients: usize,
    requests: usize,
) -> anyhow::Result<Load> {
    let url = reqwest::Url::parse(redis_url).context("--redis-url")?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = url.port().unwrap_or(6379).to_string();
    let key = format!("{prefix}:bench-floor:{}", Uuid::new_v4().simple());
    let run_id = Uuid::new_v4().to_string();
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", &host, "-p", &port, "-c", &clients.to_string()])
        .args(["-n", &requests.to_string(), "--csv"])
        .args(["XADD", &key, "MAXLEN", "~", "10000", "*", "run_id", &run_id])
        .output()
        .await
        .context("run redis-benchmark (Debian's redis-tools; install-deps.sh installs it)")?;
    let _ = tokio::process::Command::new("redis-cli")
        .args(["-h", &host, "-p", &port, "DEL", &key])
        .output()
        .await;
    anyhow::ensure!(
        output.status.success(),
        "redis-benchmark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("\"XADD"))
        .with_context(|| format!("no XADD line in redis-benchmark's output: {stdout}"))?;
    let cells: Vec<f64> = line
        .split("\",\"")
        .skip(1)
        .map(|c| c.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    anyhow::ensure!(cells.len() >= 6, "unexpected redis-benchmark line: {line}");
    let ms = |v: f64| Duration::from_secs_f64(v / 1e3);
    Ok(Load {
        per_second: cells[0],
        p50: ms(cells[3]),
        p99: ms(cells[5]),
    })
}

/// One row per request into a scratch table, through an axum server on a pool of `pool_size`
/// connections, driven by `clients` concurrent clients sending `requests` in all.
pub async fn insert(
    database_url: &str,
    pool_size: u32,
    clients: usize,
    requests: usize,
) -> anyhow::Result<Load> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(pool_size)
        .connect(database_url)
        .await
        .context("connect to the stack's Postgres")?;
    let table = format!("bench_floor_{}", &Uuid::new_v4().simple().to_string()[..10]);
    // A row shaped like a run's: a random key, an owner, a status, a timestamp.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id uuid PRIMARY KEY, owner_id uuid NOT NULL, \
         status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
    )))
    .execute(&pool)
    .await?;
    let statement: Arc<str> =
        format!("INSERT INTO {table} (id, owner_id, status) VALUES ($1, $2, 'queued')").into();

    async fn handler(
        State((pool, statement)): State<(PgPool, Arc<str>)>,
    ) -> Result<StatusCode, StatusCode> {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .bind(Uuid::new_v4())
            .bind(Uuid::new_v4())
            .execute(&pool)
            .await
            .map(|_| StatusCode::ACCEPTED)
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
    }
    let app = axum::Router::new()
        .route("/floor", axum::routing::post(handler))
        .with_state((pool.clone(), statement));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/floor", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients * 2)
        .build()?;
    let load = drive(clients, requests, move || {
        let request = client.post(&url).body("{}");
        async move {
            request
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::ACCEPTED)
        }
    })
    .await;
    server.abort();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    load
}

/// `requests` calls of `request` from `clients` concurrent loops; every call must succeed.
pub async fn drive<F, Fut>(clients: usize, requests: usize, request: F) -> anyhow::Result<Load>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let per_client = requests.div_ceil(clients);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        let request = request.clone();
        handles.push(tokio::spawn(async move {
            let (mut latencies, mut failed) = (Vec::with_capacity(per_client), 0usize);
            for _ in 0..per_client {
                let t = Instant::now();
                if request().await {
                    latencies.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        }));
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for handle in handles {
        let (l, f) = handle.await?;
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(failed == 0, "{failed} floor requests failed");
    latencies.sort();
    Ok(Load {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
    })
}

/// XADD → a blocked XREADGROUP returns → one single-row UPDATE, `rounds` times, one at a time.
pub async fn handoff(
    redis_url: &str,
    prefix: &str,
    database_url: &str,
    rounds: usize,
) -> anyhow::Result<Load> {
    let config = Config::from_url(redis_url)?;
    let (writer, reader) = (
        Builder::from_config(config.clone()).build()?,
        Builder::from_config(config).build()?,
    );
    writer.init().await?;
    reader.init().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await?;
    let table = format!(
        "bench_handoff_{}",
        &Uuid::new_v4().simple().to_string()[..10]
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id uuid PRIMARY KEY, status text NOT NULL, at timestamptz)"
    )))
    .execute(&pool)
    .await?;
    let key = format!("{prefix}:bench-handoff:{}", Uuid::new_v4().simple());
    let _: () = writer
        .xgroup_create(&key, "floor", "$", true)
        .await
        .context("create the hand-off floor's group")?;

    let update = format!("UPDATE {table} SET status = 'dispatched', at = now() WHERE id = $1");
    let mut latencies = Vec::with_capacity(rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        let id = Uuid::new_v4();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (id, status) VALUES ($1, 'queued')"
        )))
        .bind(id)
        .execute(&pool)
        .await?;
        let read = {
            let (reader, key) = (reader.clone(), key.clone());
            tokio::spawn(async move {
                let r: XReadResponse<String, String, String, String> = reader
                    .xreadgroup_map("floor", "c", Some(1), Some(5_000), false, &key, ">")
                    .await?;
                anyhow::Ok(r)
            })
        };
        // Let the read block first, as a waiting worker's does.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        let _: String = writer
            .xadd(&key, false, None, "*", ("run_id", id.to_string()))
            .await?;
        let entries = read.await??;
        anyhow::ensure!(!entries.is_empty(), "the hand-off floor read nothing");
        sqlx::query(sqlx::AssertSqlSafe(update.clone()))
            .bind(id)
            .execute(&pool)
            .await?;
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    let _: () = writer.del(&key).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    latencies.sort();
    Ok(Load {
        per_second: rounds as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
    })
}

/// The bare sandbox: bubblewrap with the run's mounts starting `python3 -c pass`, started one
/// at a time ([`SandboxFloor::once`]) so that a figure's rounds and the floor's can alternate
/// and both see the machine in the same state.
pub struct SandboxFloor {
    argv: Vec<std::ffi::OsString>,
    code: std::path::PathBuf,
}

impl SandboxFloor {
    pub fn new(runtimes: &Path) -> anyhow::Result<Self> {
        let runtime = coderun_worker::sandbox::Runtime::load("python", runtimes)
            .map_err(|e| anyhow::anyhow!("the Python runtime for the sandbox floor: {e}"))?;
        let code = tempdir()?;
        std::fs::write(code.join("main.py"), "pass\n")?;
        let mut argv: Vec<std::ffi::OsString> = [
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
        ]
        .iter()
        .map(Into::into)
        .collect();
        argv.extend([
            "--ro-bind".into(),
            runtime.usr.clone().into_os_string(),
            "/usr".into(),
        ]);
        for (target, link) in &runtime.links {
            argv.extend([
                "--symlink".into(),
                target.clone().into(),
                link.clone().into(),
            ]);
        }
        argv.extend([
            "--ro-bind".into(),
            runtime.etc.clone().into_os_string(),
            "/etc".into(),
        ]);
        for a in [
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind",
        ] {
            argv.push(a.into());
        }
        argv.extend([code.clone().into_os_string(), "/code".into()]);
        for a in ["--chdir", "/code", "--", "/usr/bin/python3", "-c", "pass"] {
            argv.push(a.into());
        }
        Ok(Self { argv, code })
    }

    /// Starts the bare sandbox once and waits for it: how long that took.
    pub async fn once(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let status = tokio::process::Command::new("bwrap")
            .args(&self.argv)
            .env_clear()
            .status()
            .await
            .context("start bwrap")?;
        anyhow::ensure!(status.success(), "bwrap python3 -c pass failed: {status}");
        Ok(t.elapsed())
    }
}

impl Drop for SandboxFloor {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.code);
    }
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("coderun-bench-floor-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    // The sandbox's uid is the caller's own here; the folder only needs to be readable.
    Ok(dir)
}
