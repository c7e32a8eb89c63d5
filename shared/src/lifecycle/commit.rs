//! The last two steps of every new run: commit its row (with the snapshot it references held
//! against the sweep), then add its stream entry. The row comes first: an entry whose row is
//! missing would be a run nobody can see, while a row whose entry is lost is found and
//! re-enqueued by the worker's reconciler.
//!
//! The commit is one round trip ([`runs::admit`]): the room and the quota are checked under
//! the owner's lock, in the same transaction as the insert, and before the snapshot is looked
//! at. So a refused request stores nothing: the snapshot is uploaded only when the commit
//! said the room is there and only the snapshot is missing; then the commit runs again.

use super::{Error, Lifecycle};
use crate::runs::{self, Admission, Admitted, NewRun};
use crate::snapshots::{self, Hashed};

/// How often a snapshot swept between its upload and the run's commit is stored again.
pub const SNAPSHOT_ATTEMPTS: usize = 3;

impl Lifecycle<'_> {
    /// Commits the run row as `queued`, with its first event, if there is room for it (and,
    /// when `adding` is given, its owner's quota has room for that many bytes).
    pub async fn commit(&self, new: NewRun, adding: Option<u64>) -> Result<Admitted, Error> {
        let admission = Admission {
            max_active: self.settings.runs.max_active_per_user,
            quota: adding.map_or(0, |_| self.settings.runs.storage_quota_bytes),
            adding: adding.unwrap_or(0),
        };
        match runs::admit(self.db, new, admission).await {
            Ok(admitted) => Ok(admitted),
            Err(runs::Error::Db(sqlx::Error::Database(e))) if e.is_foreign_key_violation() => {
                // The task (or its owner) was deleted while the run was being prepared.
                Err(Error::NotFound("task"))
            }
            Err(runs::Error::OverQuota { used }) => Err(Error::QuotaExceeded {
                used,
                quota: admission.quota,
                adding: admission.adding,
                retry_after: self.settings.retention.sweep_seconds.max(1),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Commits the run referencing the snapshot `hashed` names. Usually the bucket holds it
    /// already (the same code was submitted before) and that is the only round trip; when
    /// the commit finds it missing, it is stored (uploading only content the bucket does not
    /// hold) and the commit runs again. A snapshot no run referenced yet may be swept between
    /// the two; then it is stored again. A refused run leaves at most an unreferenced
    /// snapshot, which the sweep removes.
    pub async fn snapshot_and_commit(
        &self,
        mut new: NewRun,
        hashed: Hashed,
        adding: u64,
    ) -> Result<Admitted, Error> {
        new.code_sha256 = hashed.sha256.clone();
        let mut stored = 0;
        loop {
            match self.commit(new.clone(), Some(adding)).await {
                Err(Error::Run(runs::Error::SnapshotGone)) if stored < SNAPSHOT_ATTEMPTS => {}
                Err(Error::Run(runs::Error::SnapshotGone)) => {
                    return Err(Error::SnapshotSwept(SNAPSHOT_ATTEMPTS));
                }
                result => return result,
            }
            let snapshot = match &hashed.kept {
                Some(bytes) => {
                    snapshots::store_kept(self.db, self.storage, &hashed.sha256, bytes).await?
                }
                // Too big to have been kept: built again (in parts) as it is uploaded.
                None => snapshots::store(self.db, self.storage, new.task_id).await?,
            };
            new.code_sha256 = snapshot.sha256;
            stored += 1;
        }
    }

    /// Adds the committed run's stream entry. A failure loses nothing (the row is committed,
    /// and the reconciler re-enqueues queued runs whose entry never arrived), so it is logged,
    /// not returned: the caller's run exists either way.
    pub async fn enqueue(&self, run: &runs::Run) {
        if let Err(e) = self.queue.enqueue(run.id).await {
            tracing::warn!(run_id = %run.id, error = %e,
                "could not add the run to the stream; the reconciler will enqueue it");
        }
    }
}
