//! One run being observed by this worker: its actor reads the run's Job and Pod from the
//! stores each time it is woken, reports the phases they show (every worker does; the reports
//! are idempotent), and — when this worker [owns](super::ownership) the run — follows its log
//! and, once the execution is over, [finishes](super::finish) it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use coderun_shared::runs::{Run, RunStatus};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Inner;
use super::logs::{self, StreamState};
use super::observe::{Observation, observe};
use crate::ending::Termination;

/// A Job not seen yet is not judged absent before this: the watch may simply lag its create.
pub(super) const GONE_GRACE: Duration = Duration::from_secs(5);
/// How long a failed Pod waits for its Job's verdict (which tells a deadline from a failure).
const VERDICT_GRACE: Duration = Duration::from_secs(10);

/// What an actor does next.
pub(super) enum Step {
    Continue,
    Done,
}

pub(super) struct Actor {
    pub(super) inner: Arc<Inner>,
    pub(super) id: Uuid,
    notify: Arc<Notify>,
    /// Loaded from Postgres on the first look.
    run: Option<Run>,
    /// The last phase this actor recorded.
    recorded: Option<RunStatus>,
    pub(super) seen_job: bool,
    pub(super) started: Instant,
    /// Since when an image cannot be pulled.
    pull_since: Option<Instant>,
    /// Since when the Pod has failed without the Job's verdict.
    failing_since: Option<Instant>,
    /// The newest Pod seen, kept after it vanished (it still tells how the run ended).
    pub(super) last_pod: Option<Arc<Pod>>,
    streamer: Option<Streamer>,
}

struct Streamer {
    pod: String,
    task: JoinHandle<()>,
    state: Arc<StreamState>,
}

impl Actor {
    pub(super) fn new(inner: Arc<Inner>, id: Uuid, notify: Arc<Notify>) -> Self {
        Self {
            inner,
            id,
            notify,
            run: None,
            recorded: None,
            seen_job: false,
            started: Instant::now(),
            pull_since: None,
            failing_since: None,
            last_pod: None,
            streamer: None,
        }
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            // Boxed: the step's state (its deepest path stores the log and outputs) is large,
            // and inlined it made every actor's task about 24 KiB while it only waits between
            // wake-ups (heap profile with 1,000 Jobs: 24 MiB of the worker's 78). Boxed, it
            // exists only while a step runs.
            match Box::pin(self.step()).await {
                Ok(Step::Done) => break,
                Ok(Step::Continue) => {}
                Err(e) => {
                    tracing::warn!(run = %self.id, error = format!("{e:#}"), "observing the run failed; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.notify.notified() => {}
            }
        }
        self.stop_streamer();
        let mut actors = self.inner.actors.lock().expect("actors");
        if actors
            .get(&self.id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            actors.remove(&self.id);
        }
    }

    pub(super) fn stop_streamer(&mut self) {
        if let Some(streamer) = self.streamer.take() {
            streamer.task.abort();
        }
    }

    /// Marks the run ended for this worker.
    pub(super) fn done(&self) -> Step {
        self.inner.mark_done(self.id);
        Step::Done
    }

    /// Whether this worker owns the run now.
    pub(super) async fn claim(&self, run: &Run) -> bool {
        self.inner
            .ownership
            .claim(&self.inner.supervisor, run)
            .await
    }

    async fn step(&mut self) -> anyhow::Result<Step> {
        let inner = self.inner.clone();
        // Another live worker owns the run: it records the phases and finishes the run, so this
        // one reads Postgres only to learn when to stop looking (see `ended`), not on every
        // wake-up while the launch is recorded.
        let elsewhere = inner
            .ownership
            .held_elsewhere(inner.supervisor.me(), self.id);
        let launched = inner
            .launched
            .lock()
            .expect("launched")
            .remove(&self.id)
            .map(|(run, _)| run);
        if let Some(run) = launched {
            self.run = Some(run);
        }
        let run = match &self.run {
            Some(run) if run.status != RunStatus::Queued || elsewhere => run.clone(),
            _ => match inner.supervisor.run(self.id).await? {
                Some(run) if !run.status.is_terminal() => {
                    self.run = Some(run.clone());
                    run
                }
                _ => return Ok(self.done()),
            },
        };
        if run.status == RunStatus::Queued && !elsewhere {
            // Its launch (create, then `dispatched`) is under way: phases wait for it.
            return Ok(Step::Continue);
        }
        let job = inner.stores.job(self.id);
        let pod = inner.stores.pod(self.id);
        if pod.is_some() {
            self.last_pod = pod;
        }
        let Some(job) = job.filter(|j| j.metadata.deletion_timestamp.is_none()) else {
            return self.gone(&run).await;
        };
        self.seen_job = true;

        if self
            .streamer
            .as_ref()
            .is_some_and(|s| s.state.over_cap.load(Ordering::SeqCst))
            && self.claim(&run).await
        {
            return self
                .finish(&run, Termination::OutputLimitExceeded.into(), true)
                .await;
        }

        match observe(&job, self.last_pod.as_deref()) {
            Observation::Waiting => Ok(Step::Continue),
            Observation::Pending { pull_failure } => {
                self.record(RunStatus::Pending, "the pod is pending")
                    .await?;
                let Some(why) = pull_failure else {
                    self.pull_since = None;
                    return Ok(Step::Continue);
                };
                let since = *self.pull_since.get_or_insert_with(Instant::now);
                let timeout = Duration::from_secs(inner.settings.image_pull_timeout_seconds);
                if since.elapsed() < timeout || !self.claim(&run).await {
                    return Ok(Step::Continue);
                }
                tracing::info!(run = %self.id, %why, "giving up on an image that cannot be pulled");
                self.finish(&run, Termination::ImagePullFailed(why).into(), true)
                    .await
            }
            Observation::Running => {
                self.record(RunStatus::Running, "the program started")
                    .await?;
                if self.claim(&run).await {
                    self.ensure_streamer(&run);
                } else {
                    self.stop_streamer();
                }
                Ok(Step::Continue)
            }
            Observation::Failing(end) => {
                // The Job's verdict normally follows at once; without it for too long (a job
                // controller that is down), the Pod's word is taken.
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() < VERDICT_GRACE {
                    return Ok(Step::Continue);
                }
                self.ended(&run, end).await
            }
            Observation::Ended(end) => self.ended(&run, end).await,
        }
    }

    /// Records `phase` once per actor, when this worker owns the run: with every worker of a
    /// fleet watching every Job, phases reported by all of them multiplied the writes of a
    /// launch burst by the fleet's size (the reports are idempotent, so an owner that changes
    /// may report one again).
    async fn record(&mut self, phase: RunStatus, detail: &str) -> anyhow::Result<()> {
        let rank = |s: RunStatus| match s {
            RunStatus::Pending => 1,
            RunStatus::Running => 2,
            _ => 0,
        };
        if self.recorded.is_some_and(|r| rank(r) >= rank(phase)) {
            return Ok(());
        }
        let Some(run) = self.run.clone() else {
            return Ok(());
        };
        if !self.claim(&run).await {
            return Ok(());
        }
        self.inner.supervisor.phase(self.id, phase, detail).await?;
        self.recorded = Some(phase);
        Ok(())
    }

    fn ensure_streamer(&mut self, run: &Run) {
        let Some(pod) = self.last_pod.as_ref().and_then(|p| p.metadata.name.clone()) else {
            return;
        };
        if self
            .streamer
            .as_ref()
            .is_some_and(|s| s.pod == pod && !s.task.is_finished())
        {
            return;
        }
        // A follow that ended while the pod still runs (a dropped stream) starts again, after
        // the lines already written.
        self.stop_streamer();
        let state = Arc::new(StreamState::default());
        let task = tokio::spawn(logs::follow(
            self.inner.log_streams.clone(),
            pod.clone(),
            self.inner.supervisor.clone(),
            run.id,
            self.inner.runs.log_max_bytes,
            state.clone(),
            self.notify.clone(),
        ));
        self.streamer = Some(Streamer { pod, task, state });
    }
}
