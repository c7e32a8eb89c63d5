//! A whole platform for one test: the API in-process (its own database, bucket and Redis
//! prefix), and workers — in-process ones a test drives or stops, and worker processes a test
//! can kill -9 — all on the harness's real servers.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coderun_shared::config::Settings;
use coderun_shared::semaphore::Member;
use coderun_tests::app::{TestApp, spawn_app_with};
use coderun_worker::Context;
use coderun_worker::sandbox::{ensure_built, runtimes_dir};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Builds the language runtimes a local-executor worker needs before it starts (once per test
/// process; `infra/runtimes/build.py` reuses its cache after the first build).
pub fn ensure_runtimes(settings: &Settings) {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    if settings.worker.executor != coderun_shared::config::ExecutorKind::Local {
        return;
    }
    let result = BUILT.get_or_init(|| {
        let mut names: Vec<&str> = settings
            .languages
            .values()
            .map(|l| l.runtime.as_str())
            .collect();
        names.sort();
        names.dedup();
        ensure_built(&names).map(|_| ())
    });
    if let Err(e) = result {
        panic!("the language runtimes cannot be built: {e}");
    }
}

/// Settings that make a worker's timings test-sized: fast claims, heartbeats, reconciles.
pub fn fast_worker_settings() -> Vec<(&'static str, String)> {
    let work_dir =
        std::env::temp_dir().join(format!("coderun-test-runs-{}", Uuid::new_v4().simple()));
    vec![
        ("queue.claim_idle_ms", "1500".into()),
        ("queue.block_ms", "200".into()),
        ("worker.heartbeat_seconds", "1".into()),
        ("worker.heartbeat_ttl_seconds", "3".into()),
        ("worker.janitor_seconds", "1".into()),
        ("worker.reconcile_seconds", "1".into()),
        ("worker.shutdown_grace_seconds", "2".into()),
        ("worker.work_dir", work_dir.display().to_string()),
        ("runs.requeue_after_seconds", "2".into()),
        ("capacity.lease_grace_seconds", "5".into()),
        ("limits.max_tasks_per_user", "1000".into()),
        ("runs.max_active_per_user", "1000".into()),
    ]
}

pub struct Platform {
    pub app: TestApp,
    pub token: String,
}

/// The API with `overrides` on top of the fast worker settings; no worker yet.
pub async fn platform(overrides: Vec<(&'static str, String)>) -> Platform {
    let mut all = fast_worker_settings();
    all.extend(overrides);
    let app = spawn_app_with(all).await;
    let token = app.login("demo", "demo").await;
    Platform { app, token }
}

/// A worker running in this process until stopped.
pub struct InProcessWorker {
    pub ctx: Context,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessWorker {
    /// Stops reading, drains, and returns once the worker has exited.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("worker task")
                .expect("worker exits cleanly");
        }
    }
}

impl Platform {
    pub fn settings(&self) -> Settings {
        (*self.app.state.settings).clone()
    }

    /// Starts a worker named `name` in this process.
    pub async fn worker(&self, name: &str) -> InProcessWorker {
        let mut settings = self.settings();
        ensure_runtimes(&settings);
        settings.worker.name = format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let ctx = Context::build(settings).await.expect("the worker starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(coderun_worker::run(ctx.clone(), async {
            let _ = stopped.await;
        }));
        InProcessWorker {
            ctx,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The environment that makes a `coderun-worker` process use this platform.
    pub fn worker_env(&self, name: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let s = self.settings();
        let mut env = vec![
            ("CODERUN__LOCAL_STACK", "true".to_owned()),
            (
                "CODERUN__DATABASE__URL",
                s.database.url.expose_secret().to_owned(),
            ),
            ("CODERUN__DATABASE__MAX_CONNECTIONS", "4".to_owned()),
            ("CODERUN__STORAGE__ENDPOINT", s.storage.endpoint.clone()),
            ("CODERUN__STORAGE__ACCESS_KEY", s.storage.access_key.clone()),
            (
                "CODERUN__STORAGE__SECRET_KEY",
                s.storage.secret_key.expose_secret().to_owned(),
            ),
            ("CODERUN__STORAGE__BUCKET", s.storage.bucket.clone()),
            (
                "CODERUN__REDIS__URL",
                s.redis.url.expose_secret().to_owned(),
            ),
            ("CODERUN__REDIS__PREFIX", s.redis.prefix.clone()),
            (
                "CODERUN__QUEUE__CLAIM_IDLE_MS",
                s.queue.claim_idle_ms.to_string(),
            ),
            ("CODERUN__QUEUE__BLOCK_MS", s.queue.block_ms.to_string()),
            ("CODERUN__WORKER__NAME", name.to_owned()),
            (
                "CODERUN__WORKER__HEARTBEAT_SECONDS",
                s.worker.heartbeat_seconds.to_string(),
            ),
            (
                "CODERUN__WORKER__HEARTBEAT_TTL_SECONDS",
                s.worker.heartbeat_ttl_seconds.to_string(),
            ),
            (
                "CODERUN__WORKER__JANITOR_SECONDS",
                s.worker.janitor_seconds.to_string(),
            ),
            (
                "CODERUN__WORKER__RECONCILE_SECONDS",
                s.worker.reconcile_seconds.to_string(),
            ),
            (
                "CODERUN__WORKER__WORK_DIR",
                s.worker.work_dir.display().to_string(),
            ),
            (
                "CODERUN__RUNS__REQUEUE_AFTER_SECONDS",
                s.runs.requeue_after_seconds.to_string(),
            ),
            (
                "CODERUN__CAPACITY__LEASE_GRACE_SECONDS",
                s.capacity.lease_grace_seconds.to_string(),
            ),
            ("CODERUN__CAPACITY__DEFAULT", s.capacity.default.to_string()),
            // Its environment is cleared: the runtimes folder is named instead of found.
            (
                "CODERUN__WORKER__RUNTIMES_DIR",
                runtimes_dir(&s.worker.runtimes_dir).display().to_string(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Starts a `coderun-worker` process; kill it with [`WorkerProcess::kill9`].
    pub fn worker_process(&self, name: &str, extra: &[(&str, &str)]) -> WorkerProcess {
        ensure_runtimes(&self.settings());
        let mut command = Command::new(env!("CARGO_BIN_EXE_coderun-worker"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(self.worker_env(name, extra))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        WorkerProcess {
            child: command.spawn().expect("start coderun-worker"),
        }
    }

    /// Creates a Python task whose main.py is `code`, and submits it; returns the run id.
    pub async fn submit_python(&self, code: &str, body: Value) -> String {
        let task = self.app.task(&self.token, "run me", "python").await;
        let task_id = task["id"].as_str().unwrap();
        self.app
            .put_text(
                &format!("/api/v1/tasks/{task_id}/files/main.py"),
                &self.token,
                code,
            )
            .await
            .expect(200);
        let run = self.app.submit(&self.token, task_id, body).await;
        run["id"].as_str().unwrap().to_owned()
    }

    pub async fn run(&self, id: &str) -> Value {
        self.app
            .get(&format!("/api/v1/runs/{id}"), &self.token)
            .await
            .expect(200)
    }

    /// Waits until the run's status satisfies `done`, panicking after `timeout`.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.run(id).await;
            if done(run["status"].as_str().unwrap()) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} is still {} after {timeout:?}: {run}",
                run["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for(id, timeout, |s| {
            ["succeeded", "failed", "stopped", "canceled"].contains(&s)
        })
        .await
    }

    /// Every line of the run's log, page by page.
    pub async fn log(&self, id: &str) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        let mut page = 1;
        loop {
            let body = self
                .app
                .get(&format!("/api/v1/runs/{id}/log?page={page}"), &self.token)
                .await
                .expect(200);
            lines.extend(
                body["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap().to_owned()),
            );
            if page >= body["total_pages"].as_u64().unwrap() {
                return (lines, body["complete"].as_bool().unwrap());
            }
            page += 1;
        }
    }

    /// Phases of the run's events, in order.
    pub fn phases(run: &Value) -> Vec<String> {
        run["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["phase"].as_str().unwrap().to_owned())
            .collect()
    }
}

pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// SIGKILL: the worker gets no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself (a crash point), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The permits held by runs (an idle worker also holds a reservation while it reads).
/// Waits (up to 10 s) until no run holds a permit: a worker gives a run's permit back right
/// after it records the run's end, so a test that saw the end may look a moment early.
pub async fn wait_no_run_permits(ctx: &Context) {
    for _ in 0..200 {
        if run_permits(ctx).await.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("run permits still held: {:?}", run_permits(ctx).await);
}

pub async fn run_permits(ctx: &Context) -> Vec<String> {
    ctx.permits
        .holders()
        .await
        .unwrap()
        .into_iter()
        .filter(|h| matches!(h.member, Member::Run(_)))
        .map(|h| h.member.key())
        .collect()
}

/// Overrides that make workers use the Kubernetes executor through `kubeconfig` (the stand-in
/// API server's), with a test-sized image-pull timeout.
pub fn kubernetes_settings(kubeconfig: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("worker.executor", "kubernetes".into()),
        ("kubernetes.kubeconfig", kubeconfig.display().to_string()),
        ("kubernetes.image_pull_timeout_seconds", "2".into()),
        ("kubernetes.creates_per_second", "50".into()),
        ("kubernetes.log_streams_h2c", "true".into()),
    ]
}

/// The environment that makes a `coderun-worker` process use the Kubernetes executor through
/// `kubeconfig`.
pub fn kubernetes_env(kubeconfig: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("CODERUN__WORKER__EXECUTOR", "kubernetes".into()),
        (
            "CODERUN__KUBERNETES__KUBECONFIG",
            kubeconfig.display().to_string(),
        ),
        (
            "CODERUN__KUBERNETES__IMAGE_PULL_TIMEOUT_SECONDS",
            "2".into(),
        ),
        ("CODERUN__KUBERNETES__CREATES_PER_SECOND", "50".into()),
        ("CODERUN__KUBERNETES__LOG_STREAMS_H2C", "true".into()),
    ]
}
