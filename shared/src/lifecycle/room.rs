//! Room for a new run: the task has no active run, the owner is under
//! `runs.max_active_per_user`, and the owner's stored bytes plus the task's stay within
//! `runs.storage_quota_bytes`. All three are checked by the commit ([`crate::runs::admit`]),
//! under the owner's lock and before the snapshot is stored, so they hold exactly under
//! concurrent submissions and a refused request stores nothing. The datasets a run names are
//! checked here, before the commit.

use super::{Error, Lifecycle};

impl Lifecycle<'_> {
    /// The first of `datasets` the bucket does not hold, with the names it does.
    pub async fn missing_dataset(
        &self,
        datasets: &[String],
    ) -> Result<Option<(String, Vec<String>)>, Error> {
        if datasets.is_empty() {
            return Ok(None);
        }
        let known: Vec<String> = self
            .storage
            .list_datasets()
            .await?
            .into_iter()
            .map(|d| d.name)
            .collect();
        Ok(datasets
            .iter()
            .find(|d| !known.contains(d))
            .map(|d| (d.clone(), known)))
    }
}
