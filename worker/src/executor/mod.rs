//! Executors run a run somewhere: the local sandbox on this machine, or a Kubernetes Job. Both
//! keep one execution per run attempt, give every program the same
//! [`environment`](environment::RunEnvironment), and report what their executions do to the
//! [`Supervisor`] — never to the recorder or the semaphore themselves.
//!
//! The contract, step by step:
//! 1. [`Executor::prepare`] makes the run's execution exist and returns it as a [`Prepared`];
//!    preparing a run this executor already has gives back the same execution.
//! 2. The consumer records `dispatched`, then either [`Prepared::start`]s it or — the run was
//!    canceled meanwhile — [`Prepared::discard`]s it. Whether the program can already be under
//!    way before `start` is the executor's [`Traits::start`]: a local program waits
//!    for it, a Job runs from its creation (its fetch step comes first, so a discarded Job's
//!    program rarely gets anywhere).
//! 3. The execution reports phases, log and end to the supervisor; [`Executor::stop`] ends it
//!    early.
//!
//! Whether executions outlive the worker that launched them is [`Traits::durability`]: the
//! reconciler matches on it to decide between attempting a run again and adopting it.
//!
//! A new executor is a module of its own here plus one arm in [`build`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coderun_shared::config::{ExecutorKind, Settings};
use coderun_shared::runs::Run;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::supervisor::Supervisor;

pub mod datasets;
pub mod environment;
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

/// Whether an execution survives the worker that launched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The execution is a process of the worker's host and dies with the worker: a run whose
    /// worker died is lost, and attempted again while it has attempts left.
    DiesWithWorker,
    /// The execution lives elsewhere (a Job) and carries on without its worker: any worker
    /// adopts it, and it is lost only once the execution itself is gone.
    OutlivesWorker,
}

/// When a prepared execution's program may begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only once [`Prepared::start`] is called; a discarded execution never ran anything.
    OnStart,
    /// As soon as the execution exists; [`Prepared::discard`] deletes it, possibly after its
    /// first steps ran.
    OnCreate,
}

/// A run's execution that exists and is this run's, waiting to be started or discarded.
#[async_trait]
pub trait Prepared: Send {
    /// Lets the program run (once `dispatched` is recorded).
    async fn start(self: Box<Self>);
    /// Ends the execution without the run ever counting as started (it was canceled, or its
    /// hand-off failed).
    async fn discard(self: Box<Self>);
}

/// What the rest of the worker must know about an executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traits {
    /// Which executor this is, recorded on the runs it launches.
    pub kind: ExecutorKind,
    /// Whether its executions outlive the worker that launched them.
    pub durability: Durability,
    /// When a prepared execution's program may begin.
    pub start: Start,
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Its kind, durability and start.
    fn traits(&self) -> Traits;

    /// Which executor this is, recorded on the runs it launches.
    fn kind(&self) -> ExecutorKind {
        self.traits().kind
    }

    /// Whether its executions outlive the worker that launched them.
    fn durability(&self) -> Durability {
        self.traits().durability
    }

    /// Makes the run's execution exist; see the module's contract.
    async fn prepare(&self, run: &Run) -> Result<Box<dyn Prepared>, LaunchError>;

    /// Ends the run's execution if this executor has it; idempotent.
    async fn stop(&self, run_id: Uuid);

    /// The runs whose executions this executor runs or watches now (their permits are renewed
    /// by this worker's heartbeat).
    fn live(&self) -> Vec<Uuid>;

    /// Whether this executor holds `run_id`'s execution now (running, or still being recorded).
    fn has(&self, run_id: Uuid) -> bool {
        self.live().contains(&run_id)
    }

    /// Kills whatever is left on this host of a run whose worker died (the reconciler ended
    /// it); a no-op for executors whose executions live elsewhere.
    async fn reap(&self, _run_id: Uuid) {}

    /// Waits (at most `grace`) for the executions in flight to end: graceful shutdown.
    async fn drain(&self, grace: Duration);

    /// Whether `run`'s execution exists, wherever it was launched; `None` when this executor
    /// cannot tell (now). Only executions that outlive their worker can be asked.
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

/// The executor `settings.worker.executor` names, reporting to `supervisor`. Fails loudly when
/// it cannot work on this host or cluster.
pub async fn build(
    settings: &Settings,
    supervisor: Supervisor,
) -> anyhow::Result<Arc<dyn Executor>> {
    Ok(match settings.worker.executor {
        ExecutorKind::Local => Arc::new(local::LocalExecutor::build(settings, supervisor).await?),
        ExecutorKind::Kubernetes => {
            Arc::new(kubernetes::KubernetesExecutor::connect(settings, supervisor).await?)
        }
    })
}
