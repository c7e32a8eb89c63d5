//! The runs benchmarks of `just bench`, against the local stack with its worker, each figure
//! recorded in the [`Table`] beside its floor ([`crate::bench_floors`]):
//!
//! 1. stream entry → launch latency with capacity free — from the moment a reader of the
//!    runs stream of its own sees the run's entry to the run's `dispatched` event —, beside a
//!    bare XADD → XREADGROUP → UPDATE hand-off; and, for reference, `queued` → `dispatched`
//!    (which also holds the submit's commit and its XADD);
//! 2. submit → `succeeded` of hello-world Python, beside bubblewrap starting `python3 -c pass`
//!    with a run's mounts;
//! 3. the worker's resident memory with 100 runs in flight (20 with `--quick`);
//! 4. a class's burst while the fleet is paused (capacity 0 through the run-time override):
//!    `burst / 5` students with 5 tasks each — the default per-user limits —, from
//!    `burst_clients` clients, beside `redis-benchmark` XADD and a bare one-row insert through
//!    an HTTP server, counting 202s and 429s and checking that every accepted run is queued
//!    with one stream entry — none lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use coderun_shared::auth::Authenticator;
use coderun_shared::config::Settings;
use coderun_shared::domain::{Description, FilePath, Language, Role, TaskName, Username};
use coderun_shared::{db, tasks, users};
use fred::prelude::*;
use fred::types::streams::XReadResponse;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::bench::{Options, percentile, post};
use crate::bench_table::{Floor, Table, Target};

pub(crate) struct Api {
    pub(crate) client: reqwest::Client,
    pub(crate) base: String,
}

impl Api {
    pub(crate) async fn login(&self, username: &str, password: &str) -> anyhow::Result<String> {
        let body = post(
            &self.client,
            format!("{}/api/v1/auth/login", self.base),
            None,
            json!({"username": username, "password": password}),
        )
        .await?;
        Ok(body["token"].as_str().context("no token")?.to_owned())
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok(body)
    }

    pub(crate) async fn submit(
        &self,
        token: &str,
        task: &str,
        body: Value,
    ) -> anyhow::Result<(u16, Option<String>)> {
        let response = self
            .client
            .post(format!("{}/api/v1/tasks/{task}/runs", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, body["id"].as_str().map(str::to_owned)))
    }

    pub(crate) async fn wait_terminal(
        &self,
        token: &str,
        run: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.get(&format!("/api/v1/runs/{run}"), token).await?;
            if ["succeeded", "failed", "stopped", "canceled"]
                .contains(&run["status"].as_str().unwrap_or(""))
            {
                return Ok(run);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "run still {} after {timeout:?}",
                run["status"]
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn event_at(run: &Value, phase: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    run["events"]
        .as_array()?
        .iter()
        .find(|e| e["phase"] == phase)?["at"]
        .as_str()?
        .parse()
        .ok()
}

pub async fn run(options: &Options, table: &Table) -> anyhow::Result<()> {
    let api = Api {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(options.burst_clients() * 2)
            .build()?,
        base: options.base_url.trim_end_matches('/').to_owned(),
    };
    let redis = Builder::from_config(Config::from_url(&options.redis_url)?).build()?;
    redis
        .init()
        .await
        .context("connect to the local stack's Redis")?;
    let capacity_key = format!("{}:capacity", options.redis_prefix);
    let admin = api.login("admin", &options.admin_password).await?;
    let class = Class::connect(options).await?;

    // The burst last: its canceled runs leave entries the fleet must skip through afterwards,
    // which would distort the latencies.
    let result = async {
        latency(options, table, &api, &class).await?;
        memory(options, table, &api, &redis, &capacity_key, &class).await?;
        burst(options, table, &api, &redis, &capacity_key, &class).await
    }
    .await;
    // Whatever happened, give the fleet its configured capacity back.
    let _: Result<(), _> = redis.del(&capacity_key).await;
    let _ = admin;
    result
}

/// Students and their tasks, written straight to the stack's Postgres with the shared library
/// and given tokens signed with the stack's key: thousands of Argon2 logins would take minutes
/// and trip the login limits, and only the measured requests need to cross the API.
pub(crate) struct Class {
    pub(crate) pool: sqlx::PgPool,
    pub(crate) settings: Settings,
    auth: Authenticator,
}

/// One student of the class: their token and their tasks' ids.
pub(crate) struct Student {
    pub(crate) token: String,
    pub(crate) tasks: Vec<String>,
}

impl Class {
    pub(crate) async fn connect(options: &Options) -> anyhow::Result<Self> {
        // The local stack's settings: its signing key and limits are the defaults.
        let settings = Settings::with_overrides([
            ("local_stack", "true".to_owned()),
            ("database.url", options.database_url.clone()),
        ])?;
        let pool = db::connect(&settings.database)
            .await
            .context("connect to the local stack's Postgres (--database-url)")?;
        let auth = Authenticator::new(&settings.auth)?;
        Ok(Self {
            pool,
            settings,
            auth,
        })
    }

    /// `students` new students with `tasks` Python tasks each whose main file is `code` (with
    /// `{n}` replaced by a number unique in the class, when it appears).
    pub(crate) async fn students(
        &self,
        students: usize,
        tasks: usize,
        code: &str,
    ) -> anyhow::Result<Vec<Student>> {
        let class = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let s = &self.settings;
        let main = FilePath::parse("main.py", &s.limits).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let language = Language::parse("python", &s.languages)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .0;
        let students = futures::stream::iter(0..students)
            .map(|u| {
                let (pool, main, language) = (self.pool.clone(), main.clone(), language.clone());
                let username = format!("bench-{class}-{u}");
                async move {
                    let name = Username::parse(&username).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    let user = users::create(&pool, &name, "!bench", Role::Student).await?;
                    let (token, _) = self.auth.issue(user.id, Role::Student)?;
                    let mut ids = Vec::with_capacity(tasks);
                    for t in 0..tasks {
                        let task = tasks::create(
                            &pool,
                            tasks::NewTask {
                                owner_id: user.id,
                                name: TaskName::parse(&format!("bench {t}"))
                                    .map_err(|e| anyhow::anyhow!("{e:?}"))?,
                                language: language.clone(),
                                description: Description::parse("")
                                    .map_err(|e| anyhow::anyhow!("{e:?}"))?,
                                main_file: main.clone(),
                                files: vec![(
                                    main.clone(),
                                    code.replace("{n}", &(u * tasks + t).to_string()),
                                )],
                            },
                            s.limits.max_tasks_per_user,
                        )
                        .await?;
                        ids.push(task.id.to_string());
                    }
                    anyhow::Ok(Student { token, tasks: ids })
                }
            })
            .buffered(16)
            .try_collect::<Vec<Student>>()
            .await?;
        // A class that signs up through the API over days is seen by autovacuum as it grows;
        // one written here in seconds is not, and the servers' cached plans would still be
        // those made when the tables were a few rows (a whole-table read per request). What
        // autovacuum's next ANALYZE would do, done now: the burst measures submissions, not
        // a bulk load's first minute. Nor the bulk load's writeback: it is flushed now.
        sqlx::query("ANALYZE users, tasks, task_files")
            .execute(&self.pool)
            .await?;
        crate::bench::settle().await;
        Ok(students)
    }
}

/// A class submitting at once while the fleet is paused: `burst / 5` students with 5 tasks each
/// (the default `runs.max_active_per_user`), spread over `burst_clients` clients.
async fn burst(
    options: &Options,
    table: &Table,
    api: &Api,
    redis: &Client,
    capacity_key: &str,
    class: &Class,
) -> anyhow::Result<()> {
    let per_student = 5usize;
    let clients_count = options.burst_clients();
    let students_count = options.burst().div_ceil(per_student);
    println!(
        "runs: a class of {students_count} students with {per_student} tasks each, submitting \
         from {clients_count} clients …"
    );
    let students = class
        .students(students_count, per_student, "print('burst')\n")
        .await?;
    let mut clients: Vec<Vec<(String, String)>> = vec![Vec::new(); clients_count];
    for (i, student) in students.iter().enumerate() {
        for task in &student.tasks {
            clients[i % clients_count].push((student.token.clone(), task.clone()));
        }
    }
    let stream_key = format!("{}:runs", options.redis_prefix);
    let before: u64 = redis.xlen(&stream_key).await?;
    let _: () = redis.set(capacity_key, 0, None, None, false).await?;

    let started = Instant::now();
    let mut handles = Vec::new();
    for submissions in clients {
        let (client, base) = (api.client.clone(), api.base.clone());
        handles.push(tokio::spawn(async move {
            let api = Api { client, base };
            let mut results = Vec::new();
            for (token, task) in submissions {
                let t = Instant::now();
                let outcome = api.submit(&token, &task, json!({})).await;
                results.push((t.elapsed(), outcome.ok(), token));
            }
            results
        }));
    }
    let mut latencies = Vec::new();
    let (mut accepted, mut throttled, mut other) = (Vec::new(), 0usize, 0usize);
    for handle in handles {
        for (latency, outcome, token) in handle.await? {
            latencies.push(latency);
            match outcome {
                Some((202, Some(id))) => accepted.push((token, id)),
                Some((429, _)) => throttled += 1,
                _ => other += 1,
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let submitted = latencies.len();

    // None lost: every accepted run exists and has its stream entry. Most are still queued; a
    // few may have launched through seats a worker reserved before the pause (it holds up to
    // `queue.read_batch` while its read blocks), which is not a loss.
    let after: u64 = redis.xlen(&stream_key).await?;
    let ids: Vec<uuid::Uuid> = accepted
        .iter()
        .filter_map(|(_, id)| id.parse().ok())
        .collect();
    let (found, queued): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'queued') FROM runs WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&class.pool)
    .await?;
    let entries = after.saturating_sub(before);

    // The floors, at the same connection count.
    let xadd = crate::bench_floors::xadd(
        &options.redis_url,
        &options.redis_prefix,
        clients_count,
        submitted.max(10_000),
    )
    .await?;
    let insert = crate::bench_floors::insert(
        &options.database_url,
        class.settings.database.max_connections,
        clients_count,
        submitted,
    )
    .await?;
    let note = format!(
        "{submitted} submissions from {clients_count} clients in {:.1} s: {} accepted (202), \
         {throttled} throttled (429), {other} other; {found} found ({queued} still queued), {entries} new stream entries",
        elapsed.as_secs_f64(),
        accepted.len()
    );
    table.record(
        "runs",
        "burst: submissions/s",
        submitted as f64 / elapsed.as_secs_f64(),
        "req/s",
        Some(Target::at_least(1000.0)),
        Some(Floor {
            what: format!("bare insert via HTTP; XADD {:.0}/s", xadd.per_second),
            value: insert.per_second,
        }),
        note,
    );
    table.record(
        "runs",
        "burst: submit p50",
        ms(percentile(&latencies, 50.0)),
        "ms",
        None,
        Some(Floor {
            what: "bare insert via HTTP".into(),
            value: ms(insert.p50),
        }),
        "",
    );
    table.record(
        "runs",
        "burst: submit p99",
        ms(percentile(&latencies, 99.0)),
        "ms",
        Some(Target::at_most(250.0)),
        Some(Floor {
            what: "bare insert via HTTP".into(),
            value: ms(insert.p99),
        }),
        "",
    );
    table.record(
        "runs",
        "burst: runs lost",
        (accepted.len() as f64 - found as f64).max(0.0) + (accepted.len() as f64 - entries as f64).abs(),
        "runs",
        Some(Target::at_most(0.0)),
        None,
        "accepted runs without a row, plus any difference between accepted runs and new stream entries",
    );

    // Cancel them: the burst only measures admission.
    futures::stream::iter(accepted)
        .map(|(token, id)| {
            let request = api
                .client
                .post(format!("{}/api/v1/runs/{id}/stop", api.base))
                .bearer_auth(token);
            async move { request.send().await.map(|_| ()) }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    let _: () = redis.del(capacity_key).await?;
    Ok(())
}

/// Entry → launch latency, and submit → succeeded of hello-world Python beside the bare sandbox.
async fn latency(options: &Options, table: &Table, api: &Api, class: &Class) -> anyhow::Result<()> {
    let rounds = if options.quick { 15 } else { 40 };
    let student = class
        .students(1, rounds, "print('hello, world')\n")
        .await?
        .pop()
        .context("no student")?;
    let token = &student.token;
    let stream = coderun_shared::redis::Keys::new(&options.redis_prefix).stream();
    let observer = EntryObserver::start(&options.redis_url, stream).await?;
    // Its read is blocked before the first submit.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut to_launch, mut to_success, mut client_seen) = (Vec::new(), Vec::new(), Vec::new());
    let (mut queued_to_launch, mut observer_late) = (Vec::new(), 0usize);
    // The floor's starts alternate with the runs, so that both see the machine in the same
    // state (an earlier suite's writes may still be draining to disk while the rounds run).
    let runtimes = coderun_worker::sandbox::runtimes_dir(&class.settings.worker.runtimes_dir);
    let floor = crate::bench_floors::SandboxFloor::new(&runtimes)?;
    let mut bare = Vec::with_capacity(rounds);
    for task in &student.tasks {
        bare.push(floor.once().await?);
        let t = Instant::now();
        let (status, id) = api.submit(token, task, json!({})).await?;
        anyhow::ensure!(status == 202, "submit answered {status}");
        let run = api
            .wait_terminal(token, &id.context("no run id")?, Duration::from_secs(60))
            .await?;
        client_seen.push(t.elapsed());
        anyhow::ensure!(
            run["status"] == "succeeded",
            "hello world did not succeed: {run}"
        );
        let queued = event_at(&run, "queued").context("no queued event")?;
        let dispatched = event_at(&run, "dispatched").context("no dispatched event")?;
        let finished: chrono::DateTime<chrono::Utc> = run["finished_at"]
            .as_str()
            .context("no finished_at")?
            .parse()?;
        let id = run["id"].as_str().context("run without id")?;
        let entry_seen = observer
            .seen(id)
            .with_context(|| format!("the stream observer saw no entry for run {id}"))?;
        // The observer may wake after the worker has already dispatched (it is one more
        // blocked reader, served in turn): such a sample counts as zero and is reported.
        match (dispatched - entry_seen).to_std() {
            Ok(latency) => to_launch.push(latency),
            Err(_) => {
                observer_late += 1;
                to_launch.push(Duration::ZERO);
            }
        }
        queued_to_launch.push((dispatched - queued).to_std()?);
        to_success.push((finished - queued).to_std()?);
    }
    observer.stop();
    for v in [
        &mut to_launch,
        &mut queued_to_launch,
        &mut to_success,
        &mut client_seen,
        &mut bare,
    ] {
        v.sort();
    }
    let handoff = crate::bench_floors::handoff(
        &options.redis_url,
        &options.redis_prefix,
        &options.database_url,
        rounds,
    )
    .await?;
    drop(floor);
    let note = format!("{rounds} runs one after another, capacity free");
    let entry_note = format!(
        "{note}; the stream's observer woke after the launch {observer_late} times (counted as 0)"
    );
    table.record(
        "runs",
        "entry -> launch p50",
        ms(percentile(&to_launch, 50.0)),
        "ms",
        Some(Target::at_most(2.0)),
        Some(Floor {
            what: "XADD -> XREADGROUP -> UPDATE".into(),
            value: ms(handoff.p50),
        }),
        entry_note,
    );
    table.record(
        "runs",
        "entry -> launch p99",
        ms(percentile(&to_launch, 99.0)),
        "ms",
        Some(Target::at_most(10.0)),
        Some(Floor {
            what: "XADD -> XREADGROUP -> UPDATE".into(),
            value: ms(handoff.p99),
        }),
        "",
    );
    table.record(
        "runs",
        "queued event -> launch p50",
        ms(percentile(&queued_to_launch, 50.0)),
        "ms",
        None,
        None,
        format!(
            "the entry's figure plus the submit's commit and XADD; p99 {:.2} ms",
            ms(percentile(&queued_to_launch, 99.0))
        ),
    );
    table.record(
        "runs",
        "hello world: submit -> succeeded p50",
        ms(percentile(&to_success, 50.0)),
        "ms",
        Some(Target::floor_times(2.0)),
        Some(Floor {
            what: "bwrap + python3 -c pass".into(),
            value: ms(percentile(&bare, 50.0)),
        }),
        format!(
            "{note}, each after one start of the floor; from the queued event to finished_at; \
             as the client saw it p50 {:.1} ms",
            ms(percentile(&client_seen, 50.0))
        ),
    );
    table.record(
        "runs",
        "hello world: submit -> succeeded p99",
        ms(percentile(&to_success, 99.0)),
        "ms",
        None,
        Some(Floor {
            what: "bwrap + python3 -c pass".into(),
            value: ms(percentile(&bare, 99.0)),
        }),
        "",
    );
    Ok(())
}

/// Each new entry of the runs stream as a reader of its own sees it: the run id and the
/// moment the entry reached the reader. The reader blocks on the stream between entries (a
/// run's whole round lies between two submits), so it wakes with the workers' blocked read.
struct EntryObserver {
    seen: Arc<Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EntryObserver {
    async fn start(redis_url: &str, stream: String) -> anyhow::Result<Self> {
        // Its own connection: a blocked read stalls everything else on one.
        let client = Builder::from_config(Config::from_url(redis_url)?).build()?;
        client.init().await?;
        let newest: Vec<(String, HashMap<String, String>)> =
            client.xrevrange(&stream, "+", "-", Some(1)).await?;
        let mut last = newest
            .first()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone());
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let read: Result<XReadResponse<String, String, String, String>, _> = client
                        .xread_map(Some(64), Some(1_000), &stream, last.as_str())
                        .await;
                    let Ok(read) = read else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let at = chrono::Utc::now();
                    for (id, fields) in read.into_values().flatten() {
                        if let Some(run) = fields.get("run_id") {
                            seen.lock().expect("observer lock").insert(run.clone(), at);
                        }
                        last = id;
                    }
                }
            })
        };
        Ok(Self { seen, task })
    }

    fn seen(&self, run_id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        self.seen
            .lock()
            .expect("observer lock")
            .get(run_id)
            .copied()
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// The worker's resident memory with runs in flight (100, or 20 with `--quick`).
async fn memory(
    options: &Options,
    table: &Table,
    api: &Api,
    redis: &Client,
    capacity_key: &str,
    class: &Class,
) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(&options.worker_pid_file)
        .with_context(|| format!("read the worker's pid from {}", options.worker_pid_file))?;
    let rss = || -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse::<u64>()?
            / 1024)
    };
    let (in_flight, sleep) = if options.quick { (20, 6) } else { (100, 20) };
    let _: () = redis
        .set(capacity_key, in_flight, None, None, false)
        .await?;
    // Five runs each: the default `runs.max_active_per_user`.
    let students = class
        .students(
            in_flight / 5,
            5,
            &format!("import time\ntime.sleep({sleep})\n"),
        )
        .await?;
    let idle = rss()?;
    let mut ids = Vec::new();
    for student in &students {
        for task in &student.tasks {
            let (status, id) = api.submit(&student.token, task, json!({})).await?;
            anyhow::ensure!(status == 202, "submit answered {status}");
            ids.push((student.token.clone(), id.context("no id")?));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut peak, mut running) = (0, 0);
    while Instant::now() < deadline {
        running = 0;
        for (token, id) in &ids {
            if api.get(&format!("/api/v1/runs/{id}"), token).await?["status"] == "running" {
                running += 1;
            }
        }
        peak = peak.max(rss()?);
        if running == in_flight {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..10 {
        peak = peak.max(rss()?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    table.record(
        "runs",
        "local worker resident memory",
        peak as f64,
        "MiB",
        None,
        Some(Floor {
            what: "the same worker idle".into(),
            value: idle as f64,
        }),
        format!("peak with {running} of {in_flight} runs running"),
    );
    for (token, id) in &ids {
        let _ = api
            .client
            .post(format!("{}/api/v1/runs/{id}/stop", api.base))
            .bearer_auth(token)
            .send()
            .await?;
    }
    Ok(())
}
