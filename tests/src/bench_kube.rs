//! The Kubernetes executor benchmarks of `just bench` (`--suite kubernetes`), against the
//! stand-in Kubernetes API ([`crate::kube::StandIn`]) served by this process, with real
//! `coderun-worker` processes (the binary built next to this one) on the local stack's
//! Postgres, Redis and S3:
//!
//! 1. launches per second: `kube_replicas` workers, capacity `kube_launches`, the create rate
//!    limit out of the way; `kube_launches` runs enqueued at once, timed from the first enqueue
//!    until the stand-in holds that many Jobs, and no Job created twice;
//! 2. one worker's resident memory while it watches `kube_watched` running Jobs.
//!
//! Each scenario is isolated from the local stack's own API and worker: its own database on the
//! stack's Postgres server (a worker's reconciler judges every active run of its database, and
//! would end the other fleet's runs as lost), its own Redis prefix, its own stand-in. Runs are
//! created with the shared library, as submit does (rows, then stream entries), not through the
//! API, whose entries go to the stack's prefix. Everything is removed afterwards: the workers
//! are killed, the database dropped, the prefix's keys and the code bundle deleted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use coderun_shared::config::Settings;
use coderun_shared::domain::{Description, FilePath, Language, Role, TaskName, Username};
use coderun_shared::objects::RunObjects;
use coderun_shared::queue::RunQueue;
use coderun_shared::redis::Keys;
use coderun_shared::runs::{self, NewRun, RunSpec};
use coderun_shared::storage::Storage;
use coderun_shared::{bundle, db, tasks, users};
use fred::prelude::*;
use fred::types::scripts::Script;
use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;
use uuid::Uuid;

use crate::bench::Options;
use crate::bench_table::{Floor, Table, Target};
use crate::kube::{NAMESPACE as NS, StandIn};

/// Deletes every key matching ARGV[1]; returns how many.
const DEL_MATCHING: &str = r#"
local n = 0
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('DEL', k) end
return n
"#;

pub async fn run(options: &Options, table: &Table) -> anyhow::Result<()> {
    let worker = std::env::current_exe()?
        .parent()
        .context("the bench binary's folder")?
        .join("coderun-worker");
    anyhow::ensure!(
        worker.exists(),
        "{} is missing: build it with `cargo build --release --bin coderun-worker` \
         (`just bench` does)",
        worker.display()
    );
    println!(
        "kubernetes: stand-in API, {} worker processes ({})",
        options.kube_replicas,
        worker.display()
    );
    if options.kube_profile_with.is_none() {
        launches(options, table, &worker).await?;
    }
    memory(options, table, &worker).await
}

/// `kube_launches` runs launched by `kube_replicas` workers.
async fn launches(options: &Options, table: &Table, worker: &Path) -> anyhow::Result<()> {
    let n = options.kube_launches;
    let scenario = Scenario::start(options, worker, options.kube_replicas, n).await?;
    let result = async {
        let runs = scenario.runs(n).await?;
        let started = Instant::now();
        let enqueued = scenario.enqueue(&runs).await?;
        let (elapsed, creates, jobs) = scenario
            .wait_jobs(n, started, Duration::from_secs(120))
            .await?;
        let per_worker: Vec<(String, i64)> = sqlx::query_as(
            "SELECT worker, count(*) FROM runs WHERE worker IS NOT NULL GROUP BY worker ORDER BY worker",
        )
        .fetch_all(&scenario.pool)
        .await?;
        let spread: Vec<String> = per_worker.iter().map(|(_, c)| c.to_string()).collect();
        let floor = raw_creates(n, 64).await?;
        table.record(
            "kubernetes",
            "launches/s",
            jobs as f64 / elapsed.as_secs_f64(),
            "launches/s",
            Some(Target::at_least(1000.0)),
            Some(Floor {
                what: "bare Job creates on the stand-in, 64 at once".into(),
                value: floor,
            }),
            format!(
                "{n} Jobs in {:.2} s, {} workers, capacity {n}, enqueued in {:.2} s; per worker {}",
                elapsed.as_secs_f64(),
                options.kube_replicas,
                enqueued.as_secs_f64(),
                spread.join(" / ")
            ),
        );
        table.record(
            "kubernetes",
            "Jobs created twice or missing",
            (creates as f64 - n as f64).abs() + (jobs as f64 - n as f64).abs(),
            "Jobs",
            Some(Target::at_most(0.0)),
            None,
            format!("Job creates {creates}, Jobs {jobs}, runs {n}"),
        );
        anyhow::Ok(())
    }
    .await;
    scenario.stop().await;
    result
}

/// One worker's resident memory while it watches `kube_watched` running Jobs.
async fn memory(options: &Options, table: &Table, worker: &Path) -> anyhow::Result<()> {
    let n = options.kube_watched;
    let scenario = Scenario::start(options, worker, 1, n).await?;
    let result = async {
        let pid = scenario.workers[0].id();
        let runs = scenario.runs(n).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = rss_mib(pid)?;
        let started = Instant::now();
        scenario.enqueue(&runs).await?;
        let mut peak = idle;
        let deadline = Instant::now() + Duration::from_secs(120);
        while scenario.kube.job_creates() < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {n} Jobs after 120 s",
                scenario.kube.job_creates()
            );
            peak = peak.max(rss_mib(pid)?);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The kubelet's part: every pod starts.
        for job in scenario.kube.jobs(NS) {
            let name = job.metadata.name.unwrap_or_default();
            if let Some(pod) = scenario.kube.pod_of_job(NS, &name) {
                scenario.kube.set_pod_running(NS, &pod);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut running = 0;
        while Instant::now() < deadline {
            running = scenario.count("running").await?;
            peak = peak.max(rss_mib(pid)?);
            if running >= n as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let waited = started.elapsed();
        // A few seconds of steady watching: renewals, ticks.
        for _ in 0..50 {
            peak = peak.max(rss_mib(pid)?);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = rss_mib(pid)?;
        if options.kube_profile_with.is_some() {
            // The pid is the profiler's: its memory says nothing about the worker's.
            println!(
                "kubernetes: the worker ran under `{}` ({running} of {n} Jobs running);                  no figure recorded",
                options.kube_profile_with.as_deref().unwrap_or_default()
            );
            return anyhow::Ok(());
        }
        table.record(
            "kubernetes",
            &format!("worker resident memory, {n} Jobs"),
            peak,
            "MiB",
            Some(Target::at_most(64.0)),
            Some(Floor {
                what: "the same worker idle".into(),
                value: idle,
            }),
            format!(
                "peak; {now:.1} MiB after 5 s, {running} of {n} Jobs running {:.1} s after the first enqueue",
                waited.as_secs_f64()
            ),
        );
        anyhow::Ok(())
    }
    .await;
    scenario.stop().await;
    result
}

/// Floor of the launch rate: `n` minimal Jobs created straight on a fresh stand-in (no worker,
/// no queue, no database), `concurrency` at once; creates per second.
async fn raw_creates(n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let kube = StandIn::start().await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .build()?;
    let url = format!("{}/apis/batch/v1/namespaces/{NS}/jobs", kube.url());
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let job = serde_json::json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": format!("floor-{i}"), "labels": {"app": "floor"}},
                "spec": {"backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "python:3.12-slim"}]
                }}}
            });
            let request = client.post(&url).bearer_auth("stand-in-token").json(&job);
            async move {
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "floor Job create: {} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                );
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// VmRSS of `pid`, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status (did the worker exit?)"))?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no VmRSS")?
        .parse()?;
    Ok(kib as f64 / 1024.0)
}

/// A database, a Redis prefix, a stand-in and worker processes on them.
struct Scenario {
    settings: Settings,
    admin_url: String,
    database: String,
    database_url: String,
    redis_url: String,
    pool: PgPool,
    redis: Client,
    queue: RunQueue,
    storage: Storage,
    prefix: String,
    snapshot: Uuid,
    code_sha256: String,
    kube: StandIn,
    workers: Vec<Child>,
    dir: PathBuf,
    /// The command workers are started under (`--kube-profile-with`), if any.
    profile_with: Option<String>,
    /// The workers' log filter (`--kube-log-filter`); set, their logs are kept.
    log_filter: Option<String>,
}

impl Scenario {
    async fn start(
        options: &Options,
        worker: &Path,
        replicas: usize,
        capacity: usize,
    ) -> anyhow::Result<Scenario> {
        let id = Uuid::new_v4().simple().to_string()[..10].to_owned();
        let prefix = format!("bench-k8s-{id}");
        let database = format!("bench_k8s_{id}");
        let mut url = reqwest::Url::parse(&options.database_url).context("--database-url")?;
        let admin_url = url.to_string();
        url.set_path(&format!("/{database}"));
        let admin =
            db::connect(&Settings::with_overrides(local(options, &admin_url, &prefix))?.database)
                .await?;
        // The name is `bench_k8s_` and hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database}\""
        )))
        .execute(&admin)
        .await
        .context("create the scenario's database")?;
        admin.close().await;

        let settings = Settings::with_overrides(local(options, url.as_str(), &prefix))?;
        let pool = db::connect(&settings.database).await?;
        db::migrate(&pool).await?;
        let redis = coderun_shared::redis::connect(&settings.redis).await?;
        let queue = RunQueue::new(redis.clone(), Keys::new(&prefix), settings.queue.clone());
        let storage = Storage::connect(&settings.storage).await?;
        let _: () = redis
            .set(Keys::new(&prefix).capacity(), capacity, None, None, false)
            .await?;

        // One code snapshot for every run (as retries share their original's).
        let snapshot = Uuid::new_v4();
        let code = bundle::create(&[("main.py".to_owned(), "print('hello')\n".to_owned())])?;
        storage
            .put(
                &RunObjects::snapshot(&code.sha256),
                Bytes::from(code.bytes),
                "application/gzip",
            )
            .await?;
        sqlx::query("INSERT INTO snapshots (sha256, size, stored) VALUES ($1, 0, true)")
            .bind(&code.sha256)
            .execute(&pool)
            .await?;

        let kube = StandIn::start().await;
        let dir = std::env::temp_dir().join(format!("coderun-{prefix}"));
        std::fs::create_dir_all(&dir)?;
        let mut scenario = Scenario {
            settings,
            admin_url,
            database,
            database_url: url.to_string(),
            redis_url: options.redis_url.clone(),
            pool,
            redis,
            queue,
            storage,
            prefix,
            snapshot,
            code_sha256: code.sha256,
            kube,
            workers: Vec::new(),
            dir,
            profile_with: options.kube_profile_with.clone(),
            log_filter: options.kube_log_filter.clone(),
        };
        for i in 0..replicas {
            match scenario.spawn_worker(worker, i) {
                Ok(child) => scenario.workers.push(child),
                Err(e) => {
                    scenario.stop().await;
                    return Err(e);
                }
            }
        }
        if let Err(e) = scenario.wait_ready(Duration::from_secs(60)).await {
            scenario.stop().await;
            return Err(e);
        }
        Ok(scenario)
    }

    fn spawn_worker(&self, worker: &Path, i: usize) -> anyhow::Result<Child> {
        let s = &self.settings;
        let log = std::fs::File::create(self.dir.join(format!("worker-{i}.log")))?;
        let env: Vec<(&str, String)> = vec![
            ("CODERUN__LOCAL_STACK", "true".into()),
            ("CODERUN__DATABASE__URL", self.database_url.clone()),
            ("CODERUN__DATABASE__MAX_CONNECTIONS", "8".into()),
            ("CODERUN__STORAGE__ENDPOINT", s.storage.endpoint.clone()),
            // The stack's keys and bucket are the defaults.
            ("CODERUN__STORAGE__BUCKET", s.storage.bucket.clone()),
            ("CODERUN__REDIS__URL", self.redis_url.clone()),
            ("CODERUN__REDIS__PREFIX", self.prefix.clone()),
            ("CODERUN__WORKER__NAME", format!("{}-w{i}", self.prefix)),
            ("CODERUN__WORKER__EXECUTOR", "kubernetes".into()),
            (
                "CODERUN__WORKER__WORK_DIR",
                self.dir.join(format!("runs-{i}")).display().to_string(),
            ),
            (
                "CODERUN__KUBERNETES__KUBECONFIG",
                self.kube.kubeconfig().display().to_string(),
            ),
            ("CODERUN__KUBERNETES__CREATES_PER_SECOND", "100000".into()),
            ("CODERUN__KUBERNETES__LOG_STREAMS_H2C", "true".into()),
            (
                "CODERUN__LOG__FILTER",
                self.log_filter
                    .clone()
                    .unwrap_or_else(|| "warn,coderun_worker=info".into()),
            ),
        ];
        let mut command = match &self.profile_with {
            Some(wrapper) => {
                let mut words = wrapper.split_whitespace();
                let mut command = Command::new(words.next().context("an empty profiler")?);
                command.args(words).arg(worker);
                command
            }
            None => Command::new(worker),
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env);
        if self.profile_with.is_some() {
            // The worker starts itself again with its allocator tunables unless they are set;
            // under a profiler that second start would run unprofiled.
            command.env("GLIBC_TUNABLES", "glibc.malloc.arena_max=2");
            // The profiler and the worker it starts are one process group, ended together:
            // killing the profiler alone left its worker running.
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", worker.display()))
    }

    /// Every worker beats (it has connected to everything and started consuming).
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let keys = Keys::new(&self.prefix);
        let deadline = Instant::now() + timeout;
        loop {
            let mut ready = 0;
            for i in 0..self.workers.len() {
                if let Some(status) = self.workers[i].try_wait()? {
                    anyhow::bail!(
                        "worker {i} exited ({status}); its log: {}",
                        self.dir.join(format!("worker-{i}.log")).display()
                    );
                }
                let beating: bool = self
                    .redis
                    .exists(keys.heartbeat(&format!("{}-w{i}", self.prefix)))
                    .await?;
                ready += usize::from(beating);
            }
            if ready == self.workers.len() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{ready} of {} workers ready after {timeout:?}; logs in {}",
                self.workers.len(),
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `n` queued runs (rows only), one task each, spread over 16 users.
    async fn runs(&self, n: usize) -> anyhow::Result<Vec<Uuid>> {
        let s = &self.settings;
        let language = s.languages.get("python").context("no python language")?;
        let small = s
            .specs
            .get(&s.run.default_spec)
            .context("no default spec")?;
        let users_count = 16.min(n.max(1));
        let mut owners = Vec::new();
        for u in 0..users_count {
            let name = Username::parse(&format!("{}-{u}", self.prefix))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            owners.push(
                users::create(&self.pool, &name, "!bench", Role::Student)
                    .await?
                    .id,
            );
        }
        let main = FilePath::parse("main.py", &s.limits).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let ids: Vec<Uuid> = futures::stream::iter(0..n)
            .map(|i| {
                let (pool, owner, main) =
                    (self.pool.clone(), owners[i % users_count], main.clone());
                let (command, image) = (language.command_for("main.py"), language.image.clone());
                let spec = RunSpec {
                    name: s.run.default_spec.clone(),
                    limits: small.clone(),
                };
                let snapshot = self.snapshot;
                let code_sha256 = self.code_sha256.clone();
                let languages = &s.languages;
                async move {
                    let task = tasks::create(
                        &pool,
                        tasks::NewTask {
                            owner_id: owner,
                            name: TaskName::parse(&format!("bench {i}"))
                                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
                            language: Language::parse("python", languages)
                                .map_err(|e| anyhow::anyhow!("{e:?}"))?
                                .0,
                            description: Description::parse("")
                                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
                            main_file: main.clone(),
                            files: vec![(main, "print('hello')\n".to_owned())],
                        },
                        u32::MAX,
                    )
                    .await?;
                    let run = runs::create(
                        &pool,
                        NewRun {
                            id: Uuid::new_v4(),
                            task_id: task.id,
                            owner_id: owner,
                            command,
                            language: "python".to_owned(),
                            image,
                            spec,
                            datasets: Vec::new(),
                            remarks: String::new(),
                            snapshot_of: snapshot,
                            code_sha256,
                            retry_of: None,
                            idempotency: None,
                        },
                        u32::MAX,
                    )
                    .await?;
                    anyhow::Ok(run.id)
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(ids)
    }

    /// Adds every run's stream entry, 256 at a time; returns how long it took.
    async fn enqueue(&self, runs: &[Uuid]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        futures::stream::iter(runs.iter().copied())
            .map(|id| self.queue.enqueue(id))
            .buffer_unordered(256)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        Ok(started.elapsed())
    }

    /// Waits until the stand-in holds `n` Jobs; (time since `started`, creates, Jobs).
    async fn wait_jobs(
        &self,
        n: usize,
        started: Instant,
        timeout: Duration,
    ) -> anyhow::Result<(Duration, usize, usize)> {
        loop {
            // job_creates is a counter; listing the Jobs copies them all, so only then.
            if self.kube.job_creates() >= n {
                let jobs = self.kube.jobs(NS).len();
                if jobs >= n {
                    let elapsed = started.elapsed();
                    // Late duplicates would show within a moment.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return Ok((elapsed, self.kube.job_creates(), self.kube.jobs(NS).len()));
                }
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "{} Job creates, {} Jobs of {n} after {timeout:?}; worker logs in {}",
                self.kube.job_creates(),
                self.kube.jobs(NS).len(),
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn count(&self, status: &str) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM runs WHERE status = $1")
                .bind(status)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Kills the workers, drops the database, deletes the prefix's keys and the bundle.
    async fn stop(mut self) {
        let grouped = self.profile_with.is_some();
        for child in &mut self.workers {
            end_worker(child, grouped);
        }
        self.pool.close().await;
        let dropped = async {
            let admin = db::connect(
                &Settings::with_overrides([
                    ("local_stack", "true".to_owned()),
                    ("database.url", self.admin_url.clone()),
                ])?
                .database,
            )
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.database
            )))
            .execute(&admin)
            .await?;
            admin.close().await;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = dropped {
            eprintln!(
                "kubernetes: could not drop database {}: {e:#}",
                self.database
            );
        }
        let deleted: Result<i64, _> = Script::from_lua(DEL_MATCHING)
            .evalsha_with_reload(
                &self.redis,
                Vec::<String>::new(),
                vec![format!("{}:*", self.prefix)],
            )
            .await;
        if let Err(e) = deleted {
            eprintln!(
                "kubernetes: could not delete the keys {}:*: {e}",
                self.prefix
            );
        }
        let _ = self
            .storage
            .delete_keys(&[RunObjects::snapshot(&self.code_sha256)])
            .await;
        if self.log_filter.is_some() {
            println!(
                "kubernetes: the workers' logs are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // On a panic or an early return: never leave worker processes behind.
        let grouped = self.profile_with.is_some();
        for child in &mut self.workers {
            end_worker(child, grouped);
        }
    }
}

/// Ends a worker: killed at once, or — started under a profiler, in a process group of its
/// own — the worker asked to stop, the profiler given 30 s to write its data and end, then
/// whatever is left of the group killed.
fn end_worker(child: &mut Child, grouped: bool) {
    if !grouped {
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    let group = child.id().to_string();
    let _ = Command::new("pkill")
        .args(["-TERM", "-g", group.as_str(), "-x", "coderun-worker"])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("pkill")
        .args(["-KILL", "-g", group.as_str()])
        .status();
    let _ = child.wait();
}

/// Settings for the local stack (`--database-url` / `--redis-url` / `--s3-endpoint`).
fn local(options: &Options, database_url: &str, prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("local_stack", "true".into()),
        ("database.url", database_url.to_owned()),
        ("database.max_connections", "16".into()),
        ("redis.url", options.redis_url.clone()),
        ("redis.prefix", prefix.to_owned()),
        ("storage.endpoint", options.s3_endpoint.clone()),
        ("storage.create_bucket", "true".into()),
    ]
}
