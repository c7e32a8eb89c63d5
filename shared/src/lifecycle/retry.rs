//! Retry: a finished run's code snapshot, command, spec, datasets and remarks as a new run.
//! No snapshot is taken (the original's is reused, and the commit refuses when the retention
//! removed it); the room, commit and enqueue steps are submit's.

use uuid::Uuid;

use super::access::{self, Access, Actor};
use super::{Accepted, Error, Lifecycle, idempotency};
use crate::runs::{self, NewRun};

impl Lifecycle<'_> {
    /// Retries the finished run `run_id`, or answers the run an earlier retry with the same
    /// `idempotency_key` created.
    pub async fn retry(
        &self,
        actor: &Actor,
        run_id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<Accepted, Error> {
        let original = access::run(self.db, actor, run_id, Access::Write).await?;
        let idempotency =
            idempotency::with_fingerprint(idempotency_key, &["retry", &original.id.to_string()]);
        if let Some(run) =
            idempotency::earlier_run(self.db, original.owner_id, idempotency.as_ref()).await?
        {
            return Ok(Accepted {
                run,
                replayed: true,
                events: Vec::new(),
            });
        }
        if !original.status.is_terminal() {
            return Err(runs::Error::NotFinished.into());
        }
        // The original's exact versions (`name@vN`): a retry mounts the same bytes, even
        // after newer versions were published.
        let datasets = match self.resolve_datasets(&original.datasets).await {
            Err(Error::Invalid(why)) => {
                return Err(Error::Conflict(format!(
                    "a dataset version of the original run no longer exists: {why}"
                )));
            }
            other => other?,
        };
        let new = NewRun {
            // Time-ordered, as a submit's (see `submit`).
            id: Uuid::now_v7(),
            task_id: original.task_id,
            owner_id: original.owner_id,
            command: original.command.clone(),
            language: original.language.clone(),
            image: original.image.clone(),
            spec: original.spec.0.clone(),
            datasets,
            remarks: original.remarks.clone(),
            snapshot_of: original.snapshot_of,
            code_sha256: original.code_sha256.clone(),
            retry_of: Some(original.id),
            idempotency,
        };
        // The room is checked by the commit, under the owner's lock.
        let admitted = self.commit(new, None).await?;
        self.enqueue(&admitted.run).await;
        tracing::info!(run_id = %admitted.run.id, retry_of = %original.id, "run retried");
        Ok(Accepted {
            run: admitted.run,
            replayed: false,
            events: vec![admitted.event],
        })
    }
}
