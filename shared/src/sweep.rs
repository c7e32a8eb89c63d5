//! The background work that keeps the bucket from growing without limit, done by the workers
//! (any of them; rows are claimed with `FOR UPDATE SKIP LOCKED`, so replicas share it):
//!
//! - **deleted runs**: a trigger records every deleted run row in `object_sweeps`; the sweep
//!   removes the objects below `runs/{run_id}/` and the record, and retries failures with a
//!   growing delay. Deleting a task never waits on the bucket.
//! - **retention**: terminal runs finished more than `max_age_days` ago, or older than the
//!   newest `keep_per_task` runs of their task, lose their log, outputs and hold on the
//!   snapshot; the row stays, with `purged_at` set.
//! - **snapshots**: a snapshot no kept run references and nobody used for
//!   `snapshot_grace_seconds` is deleted, in two steps so a submit that claims it meanwhile
//!   always wins (see [`crate::snapshots`]).
//! - **datasets**: uploads abandoned for `datasets.upload_max_age_seconds` are aborted, and the
//!   objects of deleted datasets and versions and of replaced draft files are removed
//!   ([`crate::datasets::sweep`]).

use sqlx::PgPool;
use uuid::Uuid;

use crate::config::RetentionSettings;
use crate::objects::RunObjects;
use crate::runs::RunStatus;
use crate::storage::{self, Storage};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

/// Rows handled per sweep step at most.
const BATCH: i64 = 100;
/// A failed removal waits `2^attempts` seconds, at most this long, before the next try.
const MAX_BACKOFF_SECONDS: i64 = 3600;

/// What one round of every sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Deleted runs whose objects were removed.
    pub deleted_runs: usize,
    /// Runs purged by the retention.
    pub purged_runs: usize,
    /// Snapshots deleted because nothing uses them.
    pub snapshots: usize,
    /// Removals that failed and will be tried again.
    pub failures: usize,
    /// Abandoned dataset uploads aborted, and dataset objects removed (deleted datasets and
    /// versions, replaced draft files): [`crate::datasets::sweep`].
    pub datasets: crate::datasets::Swept,
    /// Status-callback events past `webhooks.keep_days`, deleted with their deliveries and
    /// attempts: [`crate::webhooks::prune`].
    pub webhook_events: usize,
}

/// One round of all three sweeps.
pub async fn sweep_all(
    db: &PgPool,
    storage: &Storage,
    retention: &RetentionSettings,
) -> Result<Swept, Error> {
    let mut swept = Swept::default();
    let (deleted, failures) = sweep_deleted_runs(db, storage).await?;
    swept.deleted_runs = deleted;
    swept.failures = failures;
    swept.purged_runs = purge_expired_runs(db, storage, retention).await?;
    swept.snapshots = sweep_snapshots(db, storage, retention.snapshot_grace_seconds).await?;
    Ok(swept)
}

/// Removes the objects of deleted runs whose record is due; returns (removed, failed).
pub async fn sweep_deleted_runs(db: &PgPool, storage: &Storage) -> Result<(usize, usize), Error> {
    let mut tx = db.begin().await?;
    let due = sqlx::query!(
        "SELECT id, run_id FROM object_sweeps WHERE not_before <= now()
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        BATCH,
    )
    .fetch_all(&mut *tx)
    .await?;
    let (mut removed, mut failed) = (0, 0);
    for row in due {
        let (id, run_id) = (row.id, row.run_id);
        match storage
            .delete_prefix(&RunObjects::new(run_id).prefix())
            .await
        {
            Ok(_) => {
                sqlx::query!("DELETE FROM object_sweeps WHERE id = $1", id)
                    .execute(&mut *tx)
                    .await?;
                removed += 1;
            }
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "cannot remove a deleted run's objects; will retry");
                sqlx::query!(
                    "UPDATE object_sweeps SET attempts = attempts + 1, last_error = $2,
                        not_before = now() + make_interval(secs =>
                            least(power(2, least(attempts, 20))::bigint, $3))
                     WHERE id = $1",
                    id,
                    e.to_string(),
                    MAX_BACKOFF_SECONDS
                )
                .execute(&mut *tx)
                .await?;
                failed += 1;
            }
        }
    }
    tx.commit().await?;
    Ok((removed, failed))
}

/// Purges the terminal runs the retention no longer keeps; returns how many.
pub async fn purge_expired_runs(
    db: &PgPool,
    storage: &Storage,
    retention: &RetentionSettings,
) -> Result<usize, Error> {
    if retention.max_age_days == 0 && retention.keep_per_task == 0 {
        return Ok(0);
    }
    let candidates: Vec<Uuid> = sqlx::query_scalar!("WITH ranked AS (
            SELECT id, status, purged_at, finished_at,
                   row_number() OVER (PARTITION BY task_id ORDER BY created_at DESC, id DESC) AS rank
            FROM runs)
         SELECT id FROM ranked
         WHERE purged_at IS NULL
           AND status = ANY($4)
           AND (($1 > 0 AND finished_at < now() - make_interval(days => $1))
             OR ($2::bigint > 0 AND rank > $2))
         ORDER BY finished_at LIMIT $3",
        (retention.max_age_days as i32),
        i64::from(retention.keep_per_task),
        BATCH,
        &RunStatus::names(&RunStatus::TERMINAL),
    )
    .fetch_all(db)
    .await?;
    let mut purged = 0;
    for run_id in candidates {
        let mut tx = db.begin().await?;
        let still: Option<Uuid> = sqlx::query_scalar!(
            "SELECT id FROM runs WHERE id = $1 AND purged_at IS NULL FOR UPDATE SKIP LOCKED",
            run_id
        )
        .fetch_optional(&mut *tx)
        .await?;
        if still.is_none() {
            continue;
        }
        if let Err(e) = storage
            .delete_prefix(&RunObjects::new(run_id).prefix())
            .await
        {
            tracing::warn!(%run_id, error = %e, "cannot purge a run's objects; will retry");
            continue;
        }
        sqlx::query!("DELETE FROM run_outputs WHERE run_id = $1", run_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query!("UPDATE runs SET purged_at = now() WHERE id = $1", run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        purged += 1;
    }
    Ok(purged)
}

/// Deletes snapshots that no kept run references and nobody used for `grace_seconds`;
/// returns how many.
///
/// Two steps: first the row is marked not stored (so from then on a submit of the same code
/// uploads it again rather than trusting it); then, under the row's lock and with a fresh look
/// at the runs, the object and the row go — unless a submit claimed it in between, in which
/// case the mark is undone and the snapshot stays.
pub async fn sweep_snapshots(
    db: &PgPool,
    storage: &Storage,
    grace_seconds: u64,
) -> Result<usize, Error> {
    let marked = sqlx::query!(
        "UPDATE snapshots SET stored = false
         WHERE sha256 IN (
            SELECT sha256 FROM snapshots s
            WHERE last_used_at < now() - make_interval(secs => $1)
              AND NOT EXISTS (SELECT 1 FROM runs r
                              WHERE r.code_sha256 = s.sha256 AND r.purged_at IS NULL)
              AND NOT EXISTS (SELECT 1 FROM pipeline_steps ps JOIN pipeline_runs pr
                                ON pr.id = ps.pipeline_run_id
                              WHERE ps.code_sha256 = s.sha256
                                AND pr.status IN ('queued', 'running', 'awaiting_approval'))
            ORDER BY last_used_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING sha256, last_used_at",
        grace_seconds as f64,
        BATCH,
    )
    .fetch_all(db)
    .await?;
    let mut deleted = 0;
    for row in marked {
        let (sha256, last_used_at) = (row.sha256, row.last_used_at);
        let mut tx = db.begin().await?;
        // Waits for every submit admitting a run of this content (`admit_run` holds the shared
        // side of this lock), and keeps new ones out until this transaction ends.
        // (Not the checked macro: the function returns `void`, which it cannot describe.)
        sqlx::query("SELECT pg_advisory_xact_lock(1936613744, hashtext($1))")
            .bind(&sha256)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query!(
            "SELECT last_used_at, stored FROM snapshots WHERE sha256 = $1 FOR UPDATE",
            sha256,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((used_at, stored)) = row.map(|r| (r.last_used_at, r.stored)) else {
            continue;
        };
        // A fresh statement: it sees every run committed before the lock was taken.
        let referenced = sqlx::query_scalar!(
            r#"SELECT (EXISTS (SELECT 1 FROM runs WHERE code_sha256 = $1 AND purged_at IS NULL)
                 OR EXISTS (SELECT 1 FROM pipeline_steps ps JOIN pipeline_runs pr
                              ON pr.id = ps.pipeline_run_id
                            WHERE ps.code_sha256 = $1
                              AND pr.status IN ('queued', 'running', 'awaiting_approval')))
                AS "referenced!""#,
            &sha256
        )
        .fetch_one(&mut *tx)
        .await?;
        if stored || used_at != last_used_at || referenced {
            if !stored {
                // The object was never deleted: it may be trusted again.
                sqlx::query!(
                    "UPDATE snapshots SET stored = true WHERE sha256 = $1",
                    &sha256
                )
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            continue;
        }
        if let Err(e) = storage.delete_keys(&[RunObjects::snapshot(&sha256)]).await {
            // The row stays marked not stored: the next round tries again.
            tracing::warn!(%sha256, error = %e, "cannot delete an unused snapshot; will retry");
            continue;
        }
        sqlx::query!("DELETE FROM snapshots WHERE sha256 = $1", &sha256)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        deleted += 1;
    }
    Ok(deleted)
}
