//! The Postgres pool, the embedded migrations, and the schema check the servers run at start.
//!
//! Migrating is a step of its own (`coderun-functions migrate`: a Kubernetes Job, a deploy
//! step before the Lambda is updated, `just dev`, the test harness), never a side effect of a
//! server starting: a fleet of replicas or a Lambda cold start must not race to change the
//! schema. A server only checks that every migration it was built with is applied, and refuses
//! to serve an older schema, saying which step to run.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseSettings;

/// The migrations compiled into every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The command that brings a database's schema up to date.
pub const MIGRATE_COMMAND: &str = "coderun-functions migrate";

/// Why a server refuses to use a database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database has no coderun schema yet; run `{MIGRATE_COMMAND}` (with the same \
         database.url) before starting the servers"
    )]
    Empty,
    #[error(
        "the database schema is older than this binary: migration {missing} ({description}) \
         is not applied; run `{MIGRATE_COMMAND}` (with the same database.url) before starting \
         the servers"
    )]
    Behind { missing: i64, description: String },
    #[error(
        "migration {0} failed part-way and is marked dirty; repair the database by hand, \
         then run `{MIGRATE_COMMAND}` again"
    )]
    Dirty(i64),
    #[error(
        "migration {0} was changed after it was applied to this database (its checksum \
         differs); the database and this binary disagree about the schema"
    )]
    Changed(i64),
    #[error("cannot read the applied migrations: {0}")]
    Db(#[from] sqlx::Error),
}

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

/// Connects, then refuses a database whose schema is not current: what the servers do at start.
pub async fn connect_checked(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let pool = connect(settings).await?;
    check_schema(&pool).await?;
    Ok(pool)
}

/// Applies every pending migration (the migrate step). Safe to run again and from several
/// places at once: the migrator takes an advisory lock and skips what is applied.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| anyhow::anyhow!("cannot apply the database migrations: {e}"))
}

/// Every migration this binary was built with is applied, completely, and unchanged. A schema
/// newer than the binary (a migration it does not know, during a rolling update) is accepted:
/// migrations only add what older binaries can ignore.
pub async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let table = MIGRATOR.table_name.as_ref();
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Err(SchemaError::Empty);
    }
    // The table name is sqlx's constant, not input.
    let applied: Vec<(i64, bool, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, success, checksum FROM {table} ORDER BY version"
    )))
    .fetch_all(pool)
    .await?;
    if let Some((version, _, _)) = applied.iter().find(|(_, success, _)| !success) {
        return Err(SchemaError::Dirty(*version));
    }
    for migration in MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        match applied.iter().find(|(v, _, _)| *v == migration.version) {
            None => {
                return Err(SchemaError::Behind {
                    missing: migration.version,
                    description: migration.description.to_string(),
                });
            }
            Some((_, _, checksum)) if checksum.as_slice() != migration.checksum.as_ref() => {
                return Err(SchemaError::Changed(migration.version));
            }
            Some(_) => {}
        }
    }
    Ok(())
}
