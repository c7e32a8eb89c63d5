//! Outages lose nothing: while runs drain and submissions arrive, Redis, S3 and Postgres are
//! each killed with -9, left down for a few seconds and started again on the same port with the
//! same data, and the stand-in Kubernetes API answers 500 and stalls. No run fails for an
//! infrastructure reason, none is lost or run twice, capacity is never exceeded, submissions
//! during the outage get 503 with `Retry-After` (never 500) and succeed when repeated with the
//! same `Idempotency-Key`, and the dependency's circuit breaker opens and closes again.
//!
//! The harness's servers are shared by this whole test process, so these tests take turns
//! (and live in a test binary of their own).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use coderun_shared::transient::Dependency;
use coderun_tests::app::{Payload, TestResponse};
use coderun_tests::kube::{Fault, NAMESPACE as NS, StandIn};
use coderun_tests::servers::{Server, TestServers};
use support::{InProcessWorker, Platform, kubernetes_settings, platform, run_permits};

/// One outage at a time: they share the servers.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CAPACITY: usize = 3;
const T: Duration = Duration::from_secs(120);

/// Test-sized retries and breakers, and clients that give up on a dead server quickly.
fn outage_settings() -> Vec<(&'static str, String)> {
    vec![
        ("capacity.default", CAPACITY.to_string()),
        ("resilience.retry_initial_ms", "100".into()),
        ("resilience.retry_max_delay_ms", "1000".into()),
        ("resilience.retry_max_seconds", "120".into()),
        ("resilience.breaker_failures", "2".into()),
        ("resilience.breaker_open_ms", "300".into()),
        ("resilience.breaker_max_open_ms", "2000".into()),
        ("redis.command_timeout_ms", "1000".into()),
        ("database.acquire_timeout_seconds", "2".into()),
    ]
}

const PROGRAM: &str = "import time\ntime.sleep(1)\nprint('done')\n";

/// Creates `n` Python tasks holding [`PROGRAM`]; returns their ids.
async fn tasks(p: &Platform, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let task = p.app.task(&p.token, &format!("outage {i}"), "python").await;
        let id = task["id"].as_str().unwrap().to_owned();
        p.app
            .put_text(
                &format!("/api/v1/tasks/{id}/files/main.py"),
                &p.token,
                // Code of its own: snapshots are stored by content, and a submission whose
                // snapshot is already stored needs no S3 at all.
                &format!("{PROGRAM}# task {i}\n"),
            )
            .await
            .expect(200);
        ids.push(id);
    }
    ids
}

async fn submit(p: &Platform, task: &str, key: &str) -> TestResponse {
    p.app
        .send_with(
            Method::POST,
            &format!("/api/v1/tasks/{task}/runs"),
            Some(&p.token),
            &[("Idempotency-Key", key)],
            Payload::Empty,
        )
        .await
}

/// A submission's answer during an outage: accepted, or 503 problem+json with `Retry-After`.
fn accepted_or_unavailable(response: &TestResponse) -> Option<String> {
    match response.status.as_u16() {
        202 => Some(response.json()["id"].as_str().unwrap().to_owned()),
        503 => {
            assert!(
                response.header("retry-after").is_some(),
                "503 without Retry-After"
            );
            assert_eq!(
                response.header("content-type"),
                Some("application/problem+json")
            );
            None
        }
        other => panic!(
            "a submission during an outage was answered {other}: {}",
            response.text()
        ),
    }
}

/// The largest number of executions seen at once across `workers` (sampled every 10 ms from
/// the executors themselves, which need no dependency to answer).
struct Sampler {
    max: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Dependencies some worker's `/readyz` named as open at some point.
    seen_open: Arc<std::sync::Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(workers: &[&InProcessWorker]) -> Sampler {
        let executors: Vec<_> = workers.iter().map(|w| w.ctx.executor.clone()).collect();
        let routers: Vec<_> = workers
            .iter()
            .map(|w| coderun_worker::http::router(w.ctx.clone()))
            .collect();
        let (max, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let seen_open = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let task = tokio::spawn({
            let (max, stop, seen_open) = (max.clone(), stop.clone(), seen_open.clone());
            async move {
                let mut tick = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let live: usize = executors.iter().map(|e| e.live().len()).sum();
                    max.fetch_max(live, Ordering::SeqCst);
                    if tick.is_multiple_of(5) {
                        for http in &routers {
                            for dep in readyz_open(http).await {
                                seen_open.lock().unwrap().insert(dep);
                            }
                        }
                    }
                    tick += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Sampler {
            max,
            stop,
            seen_open,
            task,
        }
    }

    /// The most executions seen at once, and the dependencies `/readyz` named open.
    async fn finish(self) -> (usize, BTreeSet<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let seen = self.seen_open.lock().unwrap().clone();
        (self.max.load(Ordering::SeqCst), seen)
    }
}

/// The dependencies the worker's `/readyz` names open (none when it answers 200).
async fn readyz_open(http: &axum::Router) -> Vec<String> {
    use tower::ServiceExt;
    let request = axum::http::Request::get("/readyz")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = http.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let open: Vec<String> = body["open"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(status == 200, open.is_empty(), "{status}: {body}");
    open
}

async fn blocking(f: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(f).await.unwrap();
}

/// How often any of `workers` opened `dep`'s breaker, and whether all are closed now.
fn breaker(workers: &[&InProcessWorker], dep: Dependency) -> (u64, bool) {
    let mut opened = 0;
    let mut closed = true;
    for w in workers {
        let (state, times) = w.ctx.resilience.snapshot()[&dep];
        opened += times;
        closed &= state == "closed";
    }
    (opened, closed)
}

/// Every run ended `succeeded` once, ran once, printed its line.
async fn assert_each_ran_once_and_succeeded(p: &Platform, runs: &BTreeSet<String>) {
    for id in runs {
        let run = p.wait_terminal(id, T).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let phases = Platform::phases(&run);
        let count = |phase: &str| phases.iter().filter(|p| *p == phase).count();
        assert_eq!(count("running"), 1, "ran more than once: {run}");
        assert_eq!(count("succeeded"), 1, "{run}");
        assert_eq!(count("failed"), 0, "{run}");
        assert_eq!(p.log(id).await.0, ["done"], "{run}");
    }
}

async fn wait_no_run_permits(ctx: &coderun_worker::Context) {
    let deadline = Instant::now() + T;
    loop {
        let permits = run_permits(ctx).await;
        if permits.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "permits still held: {permits:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The scenario, for one server: runs drain, the server is killed and restarted, submissions
/// keep arriving throughout.
async fn an_outage_of(server: Server, dep: Dependency, down: Duration) {
    let _turn = TURN.lock().await;
    let p = platform(outage_settings()).await;
    let tasks = tasks(&p, 10).await;
    let (a, b) = (p.worker("a").await, p.worker("b").await);
    let sampler = Sampler::start(&[&a, &b]);

    // Before: half the tasks are submitted and start draining.
    let mut runs: BTreeSet<String> = BTreeSet::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for task in &tasks[..5] {
        let key = format!("before-{task}");
        let id = submit(&p, task, &key).await.expect(202)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        keys.insert(task.clone(), key);
        runs.insert(id);
    }
    let first = runs.iter().next().unwrap().clone();
    p.wait_for(&first, T, |s| s == "running").await;

    // The outage: the other half is submitted while the server is down.
    blocking(move || TestServers::get().kill9(server)).await;
    let down_since = Instant::now();
    let mut refused = Vec::new();
    for task in &tasks[5..] {
        let key = format!("during-{task}");
        match accepted_or_unavailable(&submit(&p, task, &key).await) {
            Some(id) => {
                runs.insert(id);
            }
            None => refused.push((task.clone(), key.clone())),
        }
        keys.insert(task.clone(), key);
    }
    let ready = p
        .app
        .send(Method::GET, "/readyz", None, Payload::Empty)
        .await;
    assert_eq!(ready.status, 503, "readyz while {server:?} is down");
    if dep != Dependency::Redis {
        // Submitting needs Postgres and S3 (a lost stream entry is repaired later, so Redis
        // being down does not refuse a submission).
        assert!(
            !refused.is_empty(),
            "nothing was refused while {server:?} was down"
        );
    }
    tokio::time::sleep(down.saturating_sub(down_since.elapsed())).await;
    blocking(move || TestServers::get().restart(server).unwrap()).await;

    // After: each refused submission succeeds when repeated with its key, and repeating an
    // accepted one answers the same run.
    for (task, key) in &refused {
        let deadline = Instant::now() + T;
        let id = loop {
            if let Some(id) = accepted_or_unavailable(&submit(&p, task, key).await) {
                break id;
            }
            assert!(Instant::now() < deadline, "still refused after the outage");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        runs.insert(id);
    }
    for (task, key) in &keys {
        let again = submit(&p, task, key).await;
        let id = again.expect(202)["id"].as_str().unwrap().to_owned();
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert!(runs.contains(&id), "a repeated submission made a new run");
    }
    assert_eq!(runs.len(), tasks.len(), "one run per task");

    assert_each_ran_once_and_succeeded(&p, &runs).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&p.app.db)
        .await
        .unwrap();
    assert_eq!(total as usize, tasks.len(), "no run was created twice");
    wait_no_run_permits(&a.ctx).await;
    let (max, seen_open) = sampler.finish().await;
    assert!(
        seen_open.contains(dep.as_str()),
        "the worker's /readyz never named {dep}: {seen_open:?}"
    );
    assert!(
        readyz_open(&coderun_worker::http::router(a.ctx.clone()))
            .await
            .is_empty()
    );
    assert!(
        max <= CAPACITY,
        "{max} executions at once, capacity {CAPACITY}"
    );

    let (opened, _) = breaker(&[&a, &b], dep);
    assert!(opened >= 1, "the {dep} breaker never opened");
    // The workers' metrics share this process's recorder with the API's `/metrics`.
    let metrics = p
        .app
        .send(Method::GET, "/metrics", None, Payload::Empty)
        .await
        .text();
    let opened_metric = format!("worker_breaker_opened_total{{dependency=\"{dep}\"}}");
    assert!(
        metrics.contains(&opened_metric),
        "{opened_metric} not in /metrics"
    );
    let deadline = Instant::now() + T;
    while !breaker(&[&a, &b], dep).1 {
        assert!(Instant::now() < deadline, "the {dep} breaker stays open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = p
        .app
        .send(Method::GET, "/readyz", None, Payload::Empty)
        .await;
    assert_eq!(ready.status, 200, "readyz after {server:?} came back");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_redis_restart_while_runs_drain_loses_no_run_and_runs_none_twice() {
    an_outage_of(Server::Redis, Dependency::Redis, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_s3_outage_while_runs_drain_is_waited_out_not_charged_to_the_runs() {
    an_outage_of(Server::S3, Dependency::S3, Duration::from_secs(4)).await;
}

#[tokio::test]
async fn a_postgres_crash_and_recovery_while_runs_drain_loses_no_run_and_answers_no_500() {
    an_outage_of(
        Server::Postgres,
        Dependency::Postgres,
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test]
async fn a_kubernetes_api_answering_500_and_stalling_fails_no_run() {
    let _turn = TURN.lock().await;
    let kube = StandIn::start().await;
    let mut settings = kubernetes_settings(kube.kubeconfig());
    settings.extend(outage_settings());
    let p = platform(settings).await;
    let tasks = tasks(&p, 6).await;
    let worker = p.worker("k").await;

    // Every create for a while is answered 500, then the API stalls for a few seconds.
    kube.inject(Fault::Status {
        method: "POST",
        path_contains: "/jobs".into(),
        status: 500,
        times: 8,
    });
    kube.inject(Fault::Delay {
        method: "*",
        path_contains: "/jobs".into(),
        delay: Duration::from_secs(3),
        times: 4,
    });
    let mut runs = BTreeSet::new();
    for task in &tasks {
        runs.insert(
            submit(&p, task, &format!("k-{task}")).await.expect(202)["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    // Play the kubelet: each run's pod runs and succeeds once its Job exists.
    let deadline = Instant::now() + T;
    let mut done = BTreeSet::new();
    while done.len() < runs.len() {
        assert!(Instant::now() < deadline, "runs did not finish: {done:?}");
        for id in &runs {
            if done.contains(id) {
                continue;
            }
            let job = coderun_worker::executor::kubernetes::job::job_name(id.parse().unwrap());
            if let Some(pod) = kube.pod_of_job(NS, &job) {
                kube.set_pod_running(NS, &pod);
                kube.append_log(NS, &pod, "done\n");
                kube.set_pod_succeeded(NS, &pod);
                done.insert(id.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &runs {
        let run = p.wait_terminal(id, T).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let phases = Platform::phases(&run);
        assert_eq!(phases.iter().filter(|p| *p == "succeeded").count(), 1);
    }
    assert_eq!(
        kube.jobs(NS).len(),
        runs.len(),
        "one Job per run, never two"
    );
    let (opened, _) = breaker(&[&worker], Dependency::Kubernetes);
    assert!(opened >= 1, "the kubernetes breaker never opened");
    let deadline = Instant::now() + T;
    while !breaker(&[&worker], Dependency::Kubernetes).1 {
        assert!(
            Instant::now() < deadline,
            "the kubernetes breaker stays open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_no_run_permits(&worker.ctx).await;
    worker.stop().await;
}
