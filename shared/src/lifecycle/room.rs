//! Room for a new run, checked before anything is stored: the task has no active run, the
//! owner is under `runs.max_active_per_user`, and the owner's stored bytes plus the task's stay
//! within `runs.storage_quota_bytes`. The commit checks the first two again atomically, so a
//! race that slips past here is still refused; this early check only keeps a refused request
//! from storing a snapshot. The datasets a run names are pinned to published versions here too.

use uuid::Uuid;

use super::{Error, Lifecycle};
use crate::{runs, snapshots};

impl Lifecycle<'_> {
    /// The task is idle and the owner may start one more run.
    pub async fn check_room(&self, task_id: Uuid, owner_id: Uuid) -> Result<(), Error> {
        if runs::task_has_active(self.db, task_id).await? {
            return Err(runs::Error::TaskBusy.into());
        }
        let max = self.settings.runs.max_active_per_user;
        if runs::active_count_of(self.db, owner_id).await? >= i64::from(max) {
            return Err(runs::Error::TooManyActive { max }.into());
        }
        Ok(())
    }

    /// The bytes the owner's kept runs hold, plus `adding`, fit the storage quota (0: none).
    pub async fn check_quota(&self, owner_id: Uuid, adding: u64) -> Result<(), Error> {
        let quota = self.settings.runs.storage_quota_bytes;
        if quota == 0 {
            return Ok(());
        }
        let used = snapshots::usage_of(self.db, owner_id).await?;
        if used.saturating_add(adding) > quota {
            return Err(Error::QuotaExceeded {
                used,
                quota,
                adding,
                retry_after: self.settings.retention.sweep_seconds.max(1),
            });
        }
        Ok(())
    }

    /// The datasets a run names (`name`, the latest published version, or `name@vN`), pinned
    /// to exact versions (`name@vN`) from Postgres: what the run records, so a retry mounts
    /// the same bytes. An unknown dataset or version is refused with what exists.
    pub async fn resolve_datasets(&self, datasets: &[String]) -> Result<Vec<String>, Error> {
        if datasets.is_empty() {
            return Ok(Vec::new());
        }
        Ok(crate::datasets::resolve(self.db, datasets).await?)
    }
}
