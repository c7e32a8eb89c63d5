//! `AppState`: what every handler may use, built once (at cold start on Lambda) and cheap to
//! clone. Handlers keep nothing between requests.

use std::sync::Arc;

use coderun_shared::auth::Authenticator;
use coderun_shared::config::Settings;
use coderun_shared::domain::{Role, Username};
use coderun_shared::livelog::LiveLog;
use coderun_shared::queue::RunQueue;
use coderun_shared::redis::Keys;
use coderun_shared::storage::Storage;
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
    pub metrics: PrometheusHandle,
    /// One multiplexed Redis connection for every non-blocking command (the API never blocks
    /// on Redis: it adds stream entries, reads live logs and publishes stop requests).
    pub redis: fred::prelude::Client,
    pub keys: Keys,
    pub queue: RunQueue,
    pub live_log: LiveLog,
    /// The web app served at `/` (`http.web_dir`), if any.
    pub web: Option<WebApp>,
}

impl AppState {
    /// Connects to Postgres (applying migrations), S3 and Redis, and seeds the local stack's
    /// users.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let web_dir = &settings.http.web_dir;
        let web = if web_dir.as_os_str().is_empty() {
            None
        } else {
            Some(WebApp::open(web_dir)?)
        };
        let db = db::connect_and_migrate(&settings.database).await?;
        let storage = Storage::connect(&settings.storage).await?;
        let auth = Arc::new(Authenticator::new(&settings.auth)?);
        let redis = redis::connect(&settings.redis).await?;
        let keys = Keys::new(&settings.redis.prefix);
        let queue = RunQueue::new(redis.clone(), keys.clone(), settings.queue.clone());
        let live_log = LiveLog::new(redis.clone(), keys.clone());
        let state = Self {
            settings: Arc::new(settings),
            db,
            storage,
            auth,
            metrics: crate::metrics::handle(),
            redis,
            keys,
            queue,
            live_log,
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

    /// Hashes on the blocking pool: Argon2 is deliberately slow.
    pub async fn hash_password(&self, password: String) -> anyhow::Result<String> {
        let auth = self.auth.clone();
        Ok(tokio::task::spawn_blocking(move || auth.hash_password(&password)).await??)
    }

    pub async fn verify_password(&self, password: String, hash: String) -> anyhow::Result<bool> {
        let auth = self.auth.clone();
        Ok(tokio::task::spawn_blocking(move || auth.verify_password(&password, &hash)).await?)
    }
}
