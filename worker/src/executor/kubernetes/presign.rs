//! Presigned URLs for the objects a Job moves — the code bundle and dataset objects (GET) and
//! the outputs archive (PUT) — with lifetimes of the executor's choosing, so the pod never
//! holds a credential: untrusted code gets no storage credentials.

use std::time::Duration;

use coderun_shared::config::StorageSettings;
use coderun_shared::storage::Storage;

#[derive(Clone, Debug)]
pub struct Presigner {
    storage: Storage,
}

impl Presigner {
    pub fn new(settings: &StorageSettings) -> Self {
        Self {
            storage: Storage::new(settings),
        }
    }

    /// A GET URL of `key`, valid for `valid`.
    pub async fn get(&self, key: &str, valid: Duration) -> anyhow::Result<String> {
        Ok(self.storage.presigned_get_for(key, valid).await?)
    }

    /// A PUT URL of `key`, valid for `valid`.
    pub async fn put(&self, key: &str, valid: Duration) -> anyhow::Result<String> {
        Ok(self.storage.presigned_put(key, valid).await?)
    }
}
