//! The benchmarks behind `just bench`. Each scenario runs a fixed number of concurrent clients
//! for a fixed time against a live server and prints requests per second and latency
//! percentiles of the successful requests, plus every failure it saw.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::bench_table::{Floor, Table, Target};

#[derive(clap::Parser, Debug)]
#[command(name = "coderun-bench")]
pub struct Options {
    /// The API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    /// Concurrent clients per scenario.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds each scenario runs (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The admin's password (the local stack's is `admin`).
    #[arg(long, default_value = "admin")]
    pub admin_password: String,
    /// Which benchmarks: `files`, `runs`, `pipelines`, `kubernetes`, `memory`, `login` or `all`.
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// The local stack's Redis (the runs suite pauses the fleet through the capacity key).
    #[arg(long, default_value = "redis://127.0.0.1:56379")]
    pub redis_url: String,
    /// The Redis key prefix of the stack.
    #[arg(long, default_value = "coderun")]
    pub redis_prefix: String,
    /// Submissions in the burst (5 per student); default 20,000, or 2,000 with `--quick`.
    #[arg(long)]
    pub burst: Option<usize>,
    /// Concurrent clients of the burst; default 200, or 100 with `--quick`.
    #[arg(long)]
    pub burst_clients: Option<usize>,
    /// Smaller loads and shorter scenarios for everyday use (`--suite runs --quick` takes
    /// under two minutes); the figures are noisier.
    #[arg(long)]
    pub quick: bool,
    /// The worker's pid file (for its resident memory).
    #[arg(long, default_value = ".local/run/worker.pid")]
    pub worker_pid_file: String,
    /// The local stack's Postgres (the kubernetes suite creates, then drops, a database there).
    #[arg(long, default_value = "postgres://coderun@127.0.0.1:55432/coderun")]
    pub database_url: String,
    /// The local stack's S3 endpoint.
    #[arg(long, default_value = "http://127.0.0.1:59000")]
    pub s3_endpoint: String,
    /// Runs launched at once (and the capacity) in the kubernetes launch benchmark.
    #[arg(long, default_value_t = 2_000)]
    pub kube_launches: usize,
    /// Worker processes of the kubernetes launch benchmark.
    #[arg(long, default_value_t = 4)]
    pub kube_replicas: usize,
    /// Running Jobs one worker watches in the kubernetes memory benchmark.
    #[arg(long, default_value_t = 1_000)]
    pub kube_watched: usize,
    /// Profile the worker of the kubernetes memory benchmark: a command (split at spaces) the
    /// worker is started under, e.g. `valgrind --tool=massif --massif-out-file=/tmp/w.massif`.
    /// The launch benchmark is skipped then, and the figures measure the profiler too.
    #[arg(long)]
    pub kube_profile_with: Option<String>,
    /// The kubernetes suite's workers log with this filter (e.g. `warn,coderun_worker=debug`
    /// for the consumer's per-batch timings), and their logs are kept (the folder is printed).
    #[arg(long)]
    pub kube_log_filter: Option<String>,
    /// The API's pid file (for its resident memory in the login suite).
    #[arg(long, default_value = ".local/run/functions.pid")]
    pub functions_pid_file: String,
    /// Concurrent clients of the wrong-password flood (a third of them log in correctly).
    #[arg(long, default_value_t = 60)]
    pub login_clients: usize,
    /// Seconds each login flood lasts.
    #[arg(long, default_value_t = 10)]
    pub login_seconds: u64,
    /// Size of the task the memory suite archives and submits (the default task limit).
    #[arg(long, default_value_t = 1024)]
    pub memory_task_mib: usize,
    /// Size of each of its files (the default file limit).
    #[arg(long, default_value_t = 10)]
    pub memory_file_mib: usize,
}

impl Options {
    pub fn burst(&self) -> usize {
        self.burst
            .unwrap_or(if self.quick { 2_000 } else { 20_000 })
    }

    pub fn burst_clients(&self) -> usize {
        self.burst_clients
            .unwrap_or(if self.quick { 100 } else { 200 })
    }

    /// Seconds each scenario of the files suite runs.
    fn scenario_seconds(&self) -> u64 {
        if self.quick {
            self.seconds.min(3)
        } else {
            self.seconds
        }
    }
}

/// What one scenario measured.
pub struct Report {
    pub name: String,
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<28} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms   ok {:>7}   failed {}",
            self.name,
            self.ok as f64 / self.elapsed.as_secs_f64(),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
            self.ok,
            self.failed
        )
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `clients` loops of `request(client_index)` for `seconds`, after a warm-up second.
async fn scenario<F, Fut>(name: &str, clients: usize, seconds: u64, request: F) -> Report
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let warmup = Instant::now() + Duration::from_secs(1);
    let deadline = warmup + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for client in 0..clients {
        let request = request.clone();
        handles.push(tokio::spawn(async move {
            let (mut latencies, mut failed) = (Vec::new(), 0usize);
            loop {
                let started = Instant::now();
                if started >= deadline {
                    break;
                }
                let ok = request(client).await;
                if started >= warmup {
                    if ok {
                        latencies.push(started.elapsed());
                    } else {
                        failed += 1;
                    }
                }
            }
            (latencies, failed)
        }));
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for handle in handles {
        let (l, f) = handle.await.expect("a client task panicked");
        latencies.extend(l);
        failed += f;
    }
    latencies.sort();
    Report {
        name: name.to_owned(),
        ok: latencies.len(),
        failed,
        elapsed: Duration::from_secs(seconds),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

pub(crate) async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut request = client.post(&url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "POST {url}: {status} {body}");
    Ok(body)
}

/// Runs the chosen suites, then prints the one table of every figure and saves its JSON copy.
/// A suite that fails is reported and the others still run; the exit status says it failed.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let started_at = chrono::Utc::now();
    let table = Table::default();
    let (options, table_ref) = (&options, &table);
    // In this order. Memory first: the files suite's 64 clients and the runs suite's burst
    // leave the API's pools and buffers grown (a full run measured the API at 215 MiB "idle"
    // after the files suite). Pipelines before runs, whose burst leaves canceled entries the
    // fleet skips through. Login last: its floods leave the API's hash buffers allocated.
    let suites: [(&str, futures::future::BoxFuture<'_, anyhow::Result<()>>); 6] = [
        (
            "memory",
            Box::pin(crate::bench_memory::run(options, table_ref)),
        ),
        ("files", Box::pin(files_suite(options, table_ref))),
        (
            "pipelines",
            Box::pin(crate::bench_pipelines::run(options, table_ref)),
        ),
        ("runs", Box::pin(crate::bench_runs::run(options, table_ref))),
        (
            "kubernetes",
            Box::pin(crate::bench_kube::run(options, table_ref)),
        ),
        (
            "login",
            Box::pin(crate::bench_login::run(options, table_ref)),
        ),
    ];
    let names: Vec<&str> = suites.iter().map(|(name, _)| *name).collect();
    anyhow::ensure!(
        options.suite == "all" || names.contains(&options.suite.as_str()),
        "no suite `{}`: the suites are {} (or `all`)",
        options.suite,
        names.join(", ")
    );
    let mut failures = Vec::new();
    for (name, suite) in suites {
        if options.suite != name && options.suite != "all" {
            continue;
        }
        settle().await;
        if let Err(e) = suite.await {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    let saved = table.finish(started_at, options.quick)?;
    println!("coderun-bench: figures saved to {}", saved.display());
    for failure in &failures {
        eprintln!("coderun-bench: suite failed: {failure}");
    }
    anyhow::ensure!(failures.is_empty(), "{} suite(s) failed", failures.len());
    Ok(())
}

/// Flushes what the machine still has to write to disk before a suite starts. An earlier
/// suite's writes (its logs and outputs in the object store, its WAL) are written back some
/// 30 s later, and meanwhile every commit's flush waits behind them: hello world measured
/// 40–55 ms right after the pipelines suite and 29 ms with this flush, its floor unchanged.
pub(crate) async fn settle() {
    if let Err(e) = tokio::process::Command::new("sync").status().await {
        eprintln!("coderun-bench: sync before the suite: {e}");
    }
}

/// Saving a 4 KiB file and reading a task's tree at `clients` concurrent clients, beside a bare
/// one-row insert through an HTTP server at the same client count.
async fn files_suite(options: &Options, table: &Table) -> anyhow::Result<()> {
    let base = options.base_url.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients * 2)
        .build()?;
    let admin = post(
        &client,
        format!("{base}/api/v1/auth/login"),
        None,
        json!({"username": "admin", "password": options.admin_password}),
    )
    .await?;
    let admin = admin["token"]
        .as_str()
        .context("login returned no token")?
        .to_owned();
    let username = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    post(
        &client,
        format!("{base}/api/v1/users"),
        Some(&admin),
        json!({"username": username, "password": "bench-password", "role": "student"}),
    )
    .await?;
    let login = post(
        &client,
        format!("{base}/api/v1/auth/login"),
        None,
        json!({"username": username, "password": "bench-password"}),
    )
    .await?;
    let token = login["token"]
        .as_str()
        .context("login returned no token")?
        .to_owned();

    let mut tasks = Vec::new();
    for i in 0..options.clients {
        let task = post(
            &client,
            format!("{base}/api/v1/tasks"),
            Some(&token),
            json!({"name": format!("bench {i}"), "language": "python"}),
        )
        .await?;
        tasks.push(task["id"].as_str().context("task without id")?.to_owned());
    }
    println!(
        "coderun-bench: {} clients, {} s per scenario, against {base}",
        options.clients, options.seconds
    );

    let content = "x".repeat(4095) + "\n";
    let save = {
        let (client, base, token, tasks) =
            (client.clone(), base.clone(), token.clone(), tasks.clone());
        move |i: usize| {
            let request = client
                .put(format!(
                    "{base}/api/v1/tasks/{}/files/src/bench.txt",
                    tasks[i]
                ))
                .bearer_auth(&token)
                .body(content.clone());
            async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
        }
    };
    let saved = scenario(
        "save a 4 KiB file",
        options.clients,
        options.scenario_seconds(),
        save,
    )
    .await;
    // The API's pool size as the local stack configures it.
    let pool_size =
        coderun_shared::config::Settings::with_overrides([("local_stack", "true".to_owned())])?
            .database
            .max_connections;
    let floor = crate::bench_floors::insert(
        &options.database_url,
        pool_size,
        options.clients,
        saved.ok.max(1000),
    )
    .await?;
    let note = format!(
        "{} clients, {} s: {:.0} saves/s, p50 {:.2} ms, {} failed",
        options.clients,
        options.scenario_seconds(),
        saved.ok as f64 / saved.elapsed.as_secs_f64(),
        saved.p50.as_secs_f64() * 1e3,
        saved.failed
    );
    table.record(
        "files",
        "save a 4 KiB file p99",
        saved.p99.as_secs_f64() * 1e3,
        "ms",
        Some(Target::at_most(20.0)),
        Some(Floor {
            what: "bare insert via HTTP".into(),
            value: floor.p99.as_secs_f64() * 1e3,
        }),
        note,
    );

    let tree = {
        let (client, base, token, tasks) =
            (client.clone(), base.clone(), token.clone(), tasks.clone());
        move |i: usize| {
            let request = client
                .get(format!("{base}/api/v1/tasks/{}", tasks[i]))
                .bearer_auth(&token);
            async move {
                match request.send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                }
            }
        }
    };
    let read = scenario(
        "read a task's tree",
        options.clients,
        options.scenario_seconds(),
        tree,
    )
    .await;
    table.record(
        "files",
        "read a task's tree p99",
        read.p99.as_secs_f64() * 1e3,
        "ms",
        None,
        None,
        format!(
            "{:.0} reads/s, p50 {:.2} ms, {} failed",
            read.ok as f64 / read.elapsed.as_secs_f64(),
            read.p50.as_secs_f64() * 1e3,
            read.failed
        ),
    );

    for id in &tasks {
        client
            .delete(format!("{base}/api/v1/tasks/{id}"))
            .bearer_auth(&token)
            .send()
            .await?;
    }
    Ok(())
}
