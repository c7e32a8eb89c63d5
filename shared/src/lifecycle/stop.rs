//! Stop: stop wins in every state. A queued run is canceled and never launches; a dispatched,
//! pending or running run moves to `stopping`, and the workers are told at once on the stops
//! channel (they also sweep for `stopping` runs, so a lost message only delays the stop); the
//! worker holding it deletes the execution and the run ends `stopped` with its log kept.
//! Stopping a run that is stopping or finished changes nothing.

use fred::interfaces::PubsubInterface;
use uuid::Uuid;

use super::access::{self, Access, Actor};
use super::{Error, Lifecycle};
use crate::runs::{self, Run, RunStatus};

impl Lifecycle<'_> {
    /// Stops the run and answers it as it is afterwards.
    pub async fn stop(&self, actor: &Actor, run_id: Uuid) -> Result<Run, Error> {
        let before = access::run(self.db, actor, run_id, Access::Write).await?;
        let run = runs::request_stop(self.db, run_id, "api").await?;
        if run.status == RunStatus::Stopping && before.status != RunStatus::Stopping {
            let published: Result<i64, _> = self
                .redis
                .publish(self.keys.stops(), run_id.to_string())
                .await;
            if let Err(e) = published {
                tracing::warn!(run_id = %run_id, error = %e,
                    "could not announce the stop; workers will find it on their sweep");
            }
        }
        if run.status != before.status {
            tracing::info!(run_id = %run_id, status = run.status.as_str(), "stop requested");
        }
        Ok(run)
    }
}
