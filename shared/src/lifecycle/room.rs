//! Room for a new run: the task has no active run, the owner is under
//! `runs.max_active_per_user`, and the owner's stored bytes plus the task's stay within
//! `runs.storage_quota_bytes`. All three are checked by the commit ([`crate::runs::admit`]),
//! under the owner's lock and before the snapshot is stored, so they hold exactly under
//! concurrent submissions and a refused request stores nothing. The datasets a run names are
//! pinned to published versions here, before the commit.

use super::{Error, Lifecycle};

impl Lifecycle<'_> {
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
