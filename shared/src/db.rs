//! The Postgres pool and the embedded migrations, applied at start-up.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseSettings;

/// The migrations compiled into every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects lazily-but-checked: the first connection is opened here so a wrong URL fails at
/// start-up with a clear message rather than on the first request.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_seconds))
        .connect(settings.url.expose_secret())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Postgres (database.url): {e}"))?;
    Ok(pool)
}

/// One cheap round trip that only a working database answers (readiness and probes).
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT 1 AS one").fetch_one(pool).await?;
    Ok(())
}

/// Connects and applies every pending migration.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let pool = connect(settings).await?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("cannot apply the database migrations: {e}"))?;
    Ok(pool)
}
