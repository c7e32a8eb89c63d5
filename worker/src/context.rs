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

use crate::executor::{self, Executor};
use crate::heartbeat::Liveness;
use crate::permits::Permits;
use crate::recorder::Recorder;
use crate::resilience::Resilience;
use crate::supervisor::Supervisor;

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
    /// This worker's capacity permits: the only way to the semaphore.
    pub permits: Permits,
    /// Which workers are alive.
    pub liveness: Liveness,
    /// What the executor reports to.
    pub supervisor: Supervisor,
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
    /// Connects everything and builds the configured executor. Fails loudly when the executor
    /// cannot work here (no sandbox on this host, no usable cluster), rather than running code
    /// unconfined or consuming runs it cannot launch.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let name = worker_name(&settings);
        let db = db::connect_checked(&settings.database).await?;
        let storage = Storage::connect(&settings.storage).await?;
        let redis = redis::connect(&settings.redis).await?;
        let reader = redis::connect(&settings.redis).await?;
        let keys = Keys::new(&settings.redis.prefix);
        let queue = RunQueue::new(redis.clone(), keys.clone(), settings.queue.clone());
        let semaphore = LeaseSemaphore::new(redis.clone(), keys.clone(), settings.capacity.default);
        let permits = Permits::new(semaphore, name.clone(), &settings);
        let liveness = Liveness::new(redis.clone(), keys.clone());
        let resilience = Arc::new(Resilience::new(settings.resilience.clone()));
        let recorder = Recorder {
            resilience: resilience.clone(),
            db: db.clone(),
            storage: storage.clone(),
            live_log: LiveLog::new(redis.clone(), keys.clone()),
            source: format!("worker:{name}"),
            live_log_ttl_seconds: settings.runs.live_log_ttl_seconds as i64,
            queue: queue.clone(),
            crash_at: settings.worker.crash_at.clone(),
        };
        let supervisor = Supervisor::new(recorder, permits.clone(), liveness.clone());
        let executor = executor::build(&settings, supervisor.clone()).await?;
        Ok(Self {
            settings: Arc::new(settings),
            name,
            db,
            storage,
            redis,
            reader,
            keys,
            queue,
            permits,
            liveness,
            supervisor,
            executor,
            resilience,
        })
    }
}
