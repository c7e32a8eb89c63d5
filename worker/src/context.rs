//! `Context`: everything one worker's loops share, built once at start-up.

use std::sync::Arc;

use coderun_shared::config::Settings;
use coderun_shared::db;
use coderun_shared::livelog::LiveLog;
use coderun_shared::queue::RunQueue;
use coderun_shared::redis::{self, Keys};
use coderun_shared::semaphore::LeaseSemaphore;
use coderun_shared::storage::Storage;
use fred::prelude::Client;
use sqlx::PgPool;

use crate::executor::Executor;
use crate::executor::kubernetes::{self, KubernetesExecutor};
use crate::executor::local::LocalExecutor;
use crate::recorder::Recorder;
use crate::resilience::Resilience;
use crate::sandbox::{Sandbox, SandboxConfig};

#[derive(Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    /// The consumer name: stable across restarts (the pod name), unique in the fleet.
    pub name: String,
    pub db: PgPool,
    pub storage: Storage,
    pub redis: Client,
    /// A connection of its own for the blocking XREADGROUP, so it stalls nothing else.
    pub reader: Client,
    pub keys: Keys,
    pub queue: RunQueue,
    pub semaphore: LeaseSemaphore,
    pub recorder: Recorder,
    pub executor: Arc<dyn Executor>,
    /// Retries and circuit breakers of the dependencies (Postgres, Redis, S3, Kubernetes).
    pub resilience: Arc<Resilience>,
}

/// The worker's name: configured, else the host name.
pub fn worker_name(settings: &Settings) -> String {
    if !settings.worker.name.is_empty() {
        return settings.worker.name.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

impl Context {
    /// Connects everything and builds the configured executor. Fails loudly when the sandbox
    /// cannot be built on this host, rather than running code unconfined.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let name = worker_name(&settings);
        let db = db::connect_checked(&settings.database).await?;
        let storage = Storage::connect(&settings.storage).await?;
        let redis = redis::connect(&settings.redis).await?;
        let reader = redis::connect(&settings.redis).await?;
        let keys = Keys::new(&settings.redis.prefix);
        let queue = RunQueue::new(redis.clone(), keys.clone(), settings.queue.clone());
        let semaphore = LeaseSemaphore::new(redis.clone(), keys.clone(), settings.capacity.default);
        let live_log = LiveLog::new(redis.clone(), keys.clone());
        let resilience = Arc::new(Resilience::new(settings.resilience.clone()));
        let recorder = Recorder {
            resilience: resilience.clone(),
            db: db.clone(),
            storage: storage.clone(),
            live_log,
            semaphore: semaphore.clone(),
            source: format!("worker:{name}"),
            live_log_ttl_seconds: settings.runs.live_log_ttl_seconds as i64,
        };
        let executor: Arc<dyn Executor> = match settings.worker.executor.as_str() {
            "local" => {
                let config = SandboxConfig {
                    uid_base: uid_base(
                        settings.worker.sandbox_uid_base,
                        settings.worker.local_slots,
                        &name,
                    ),
                    uid_count: settings.worker.local_slots,
                    cgroup_name: format!("coderun-{}", sanitize(&name)),
                    runtimes_dir: crate::sandbox::runtimes_dir(&settings.worker.runtimes_dir),
                    languages: settings
                        .languages
                        .iter()
                        .map(|(id, language)| (id.clone(), language.runtime.clone()))
                        .collect(),
                    ..SandboxConfig::default()
                };
                let sandbox = tokio::task::spawn_blocking(move || Sandbox::new(config))
                    .await?
                    .map_err(|e| {
                        anyhow::anyhow!("the local sandbox cannot be built on this host: {e}")
                    })?;
                let work_root = settings.worker.work_dir.clone();
                tokio::task::spawn_blocking(move || crate::sandbox::create_work_root(&work_root))
                    .await?
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot create worker.work_dir {}: {e}",
                            settings.worker.work_dir.display()
                        )
                    })?;
                Arc::new(LocalExecutor::new(
                    Arc::new(sandbox),
                    settings.worker.local_slots as usize,
                    recorder.clone(),
                    settings.worker.work_dir.clone(),
                    settings.runs.clone(),
                    settings.limits.clone(),
                ))
            }
            kubernetes::KIND => Arc::new(
                KubernetesExecutor::connect(
                    &settings,
                    kubernetes::Parts {
                        name: name.clone(),
                        recorder: recorder.clone(),
                        redis: redis.clone(),
                        keys: keys.clone(),
                    },
                )
                .await?,
            ),
            other => anyhow::bail!(
                "worker.executor `{other}` is not known (expected `local` or `kubernetes`)"
            ),
        };
        Ok(Self {
            settings: Arc::new(settings),
            name,
            db,
            storage,
            redis,
            reader,
            keys,
            queue,
            semaphore,
            recorder,
            executor,
            resilience,
        })
    }

    /// The permit TTL of a run: its wall time plus grace, so an unrenewed permit only expires
    /// once its execution is certainly dead.
    pub fn lease_ttl_ms(&self, wall_seconds: u32) -> u64 {
        (u64::from(wall_seconds) + self.settings.capacity.lease_grace_seconds) * 1000
    }

    /// The TTL of a reservation: long enough to cover one blocking read.
    pub fn reservation_ttl_ms(&self) -> u64 {
        self.settings.queue.block_ms + 10_000
    }
}

/// Each worker on a host takes its own block of `slots` sandbox uids, chosen by its name, so
/// two workers on one machine (almost surely) never hand the same uid to two runs.
fn uid_base(base: u32, slots: u32, name: &str) -> u32 {
    let hash = name.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    base + (hash % 1024) * slots
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
