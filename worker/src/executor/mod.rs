//! Executors run a run somewhere: the local sandbox on this machine, or a Kubernetes Job. Both
//! keep invariant 3 — one execution per run attempt — and report every phase of the
//! executions they own through the [`Recorder`](crate::recorder::Recorder).
//!
//! A local execution dies with its worker; a Job does not, so the Kubernetes executor
//! [`adopts`](Executor::adopts): any worker may observe, stop and finish any run's Job, and a
//! run is lost only when its execution no longer [`exists`](Executor::exists).

use async_trait::async_trait;
use coderun_shared::runs::Run;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod kubernetes;
pub mod local;

/// Why a launch failed, which decides what happens to the stream entry.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Worth another try later (no free sandbox slot, storage or the API server briefly down):
    /// the permit goes back and the entry is re-added, so the run stays queued.
    #[error("launch failed, will retry: {0}")]
    Retryable(String),
    /// Will never work (the API server refuses the Job as invalid, the run's spec cannot be
    /// met here): the run fails `launch_failed` with this as its detail.
    #[error("launch failed: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// `local` or `kubernetes`, recorded on the run.
    fn kind(&self) -> &'static str;

    /// Creates the run's execution without starting the program; launching a run this
    /// executor already has is a no-op. Returns once the execution exists.
    async fn launch(&self, run: &Run) -> Result<(), LaunchError>;

    /// Lets a launched execution start (called once `dispatched` is recorded), or, with
    /// `go == false`, discards it without ever running the program (the run was canceled).
    async fn start(&self, run_id: Uuid, go: bool);

    /// Ends the run's execution if this executor has it; idempotent.
    async fn stop(&self, run_id: Uuid);

    /// The runs this executor is executing now.
    fn live(&self) -> Vec<Uuid>;

    /// Whether this executor is executing `run_id` now.
    fn has(&self, run_id: Uuid) -> bool {
        self.live().contains(&run_id)
    }

    /// Kills whatever is left on this host of a run whose worker died (the reconciler ended
    /// it); a no-op for executors whose executions live elsewhere.
    async fn reap(&self, _run_id: Uuid) {}

    /// Waits (at most `grace`) for the executions in flight to end: graceful shutdown.
    async fn drain(&self, grace: std::time::Duration);

    /// Whether executions outlive the worker that launched them (a Kubernetes Job does, a
    /// local process does not). Then any worker carries on a run whose worker died, and the
    /// reconciler judges a run lost only by [`exists`](Executor::exists).
    fn adopts(&self) -> bool {
        false
    }

    /// Whether `run`'s execution exists, wherever it was launched; `None` when this executor
    /// cannot tell (now).
    async fn exists(&self, _run: &Run) -> Option<bool> {
        None
    }

    /// One cheap call that only a working backend answers (the half-open probe of its circuit
    /// breaker); executors without a remote backend have nothing to probe.
    async fn probe(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// The executor's own background work (the Kubernetes watchers) until `shutdown`; the
    /// worker runs it beside its other loops.
    async fn run(&self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
    }
}
