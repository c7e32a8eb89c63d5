//! `AppState`: what every handler may use, built once (at cold start on Lambda) and cheap to
//! clone. Handlers keep nothing between requests.

use std::sync::Arc;

use coderun_shared::auth::{self, Authenticator, HashGate};
use coderun_shared::config::Settings;
use coderun_shared::domain::{Role, Username};
use coderun_shared::lifecycle::Lifecycle;
use coderun_shared::livelog::{LiveLog, StreamSlots};
use coderun_shared::queue::RunQueue;
use coderun_shared::redis::Keys;
use coderun_shared::storage::Storage;
use coderun_shared::throttle::LoginThrottle;
use coderun_shared::{db, redis, users};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::web::WebApp;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: PgPool,
    pub storage: Storage,
    pub auth: Arc<Authenticator>,
    /// Bounds the password hashes this process computes at once, and their memory.
    pub hashes: Arc<HashGate>,
    /// A hash no password matches, with the current cost: unknown users are checked against it.
    pub dummy_hash: Arc<str>,
    pub login_throttle: LoginThrottle,
    pub metrics: PrometheusHandle,
    /// One multiplexed Redis connection for every non-blocking command (the API never blocks
    /// on Redis: it adds stream entries, reads live logs and publishes stop requests).
    pub redis: fred::prelude::Client,
    pub keys: Keys,
    pub queue: RunQueue,
    pub live_log: LiveLog,
    /// Live log streams this process may serve at once (`runs.log_streams_per_process`).
    pub log_streams: Arc<tokio::sync::Semaphore>,
    /// Each user's live log streams across the fleet (`runs.log_streams_per_user`).
    pub stream_slots: StreamSlots,
    /// The web app served at `/` (`http.web_dir`), if any.
    pub web: Option<WebApp>,
}

impl AppState {
    /// The run lifecycle on this process's stores.
    pub fn lifecycle(&self) -> Lifecycle<'_> {
        Lifecycle {
            settings: &self.settings,
            db: &self.db,
            storage: &self.storage,
            queue: &self.queue,
            redis: &self.redis,
            keys: &self.keys,
        }
    }

    /// Connects to Postgres (refusing a schema older than this binary: migrating is the
    /// `migrate` step's), S3 and Redis, and seeds the local stack's users.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate_api()?;
        let web_dir = &settings.http.web_dir;
        let web = if web_dir.as_os_str().is_empty() {
            None
        } else {
            Some(WebApp::open(web_dir)?)
        };
        let db = db::connect_checked(&settings.database).await?;
        let storage = Storage::connect(&settings.storage).await?;
        let auth = Arc::new(Authenticator::new(&settings.auth)?);
        let permits = match settings.login.max_concurrent_hashes {
            0 => auth::hash_permits_for_memory(
                settings.auth.argon2_memory_kib,
                settings.login.hash_memory_percent,
            ),
            n => n as usize,
        };
        let hashes = Arc::new(HashGate::new(
            permits,
            std::time::Duration::from_secs(settings.login.hash_wait_seconds),
        ));
        tracing::info!(permits, "password hashes at once");
        metrics::gauge!("login_hash_permits").set(permits as f64);
        let dummy_hash = Arc::from(auth.dummy_hash());
        let redis = redis::connect(&settings.redis).await?;
        let keys = Keys::new(&settings.redis.prefix);
        let queue = RunQueue::new(redis.clone(), keys.clone(), settings.queue.clone());
        let live_log = LiveLog::new(redis.clone(), keys.clone());
        let login_throttle =
            LoginThrottle::new(redis.clone(), keys.clone(), settings.login.clone());
        let log_streams = Arc::new(tokio::sync::Semaphore::new(
            settings.runs.log_streams_per_process as usize,
        ));
        let stream_slots = StreamSlots::new(
            redis.clone(),
            keys.clone(),
            settings.runs.log_streams_per_user,
        );
        let state = Self {
            settings: Arc::new(settings),
            db,
            storage,
            auth,
            hashes,
            dummy_hash,
            login_throttle,
            metrics: crate::metrics::handle(),
            redis,
            keys,
            queue,
            live_log,
            log_streams,
            stream_slots,
            web,
        };
        if state.settings.local_stack {
            state.seed_local_users().await?;
        }
        Ok(state)
    }

    /// The local stack's two users, `admin`/`admin` and `demo`/`demo`; never outside it.
    async fn seed_local_users(&self) -> anyhow::Result<()> {
        for (name, role) in [("admin", Role::Admin), ("demo", Role::Student)] {
            let username = Username::parse(name).map_err(|e| anyhow::anyhow!(e))?;
            let hash = self.hash_password(name.to_owned()).await?;
            users::ensure(&self.db, &username, &hash, role).await?;
        }
        Ok(())
    }

    /// Hashes on the blocking pool, through the gate: Argon2 is deliberately slow and big.
    pub async fn hash_password(&self, password: String) -> Result<String, auth::Error> {
        let auth = self.auth.clone();
        self.hashes
            .run(move |memory| auth.hash_password(&password, memory))
            .await?
    }

    /// Checks `password` against `hash` through the gate; `None` checks it against the dummy
    /// hash, at the same cost, and is always false.
    pub async fn verify_password(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, auth::Error> {
        let auth = self.auth.clone();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let matched = self
            .hashes
            .run(move |memory| auth.verify_password(&password, &hash, memory))
            .await?;
        Ok(matched && known)
    }
}
