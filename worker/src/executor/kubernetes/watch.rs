//! Watching coderun's Jobs and Pods, and turning what they do into the runs' phases.
//!
//! Two watchers (`kube::runtime::watcher` with the default backoff, selected by coderun's
//! label) feed two caches keyed by run. A watch that breaks or expires (410 Gone) re-lists:
//! the caches are swapped whole at `InitDone`, and deletions that happened in the gap show as
//! absence — so after every re-list, runs active in Postgres whose Job is absent are judged.
//!
//! Each run being observed has one task (an "actor") that re-reads its run's Job and Pod
//! whenever either changes, and every tick (ownership moves, image-pull timeouts). Actors of
//! every worker record phases (idempotent); only the owner — the holder of the run's permit —
//! follows the log and finishes the run, and a live owner is never displaced: an actor claims
//! a run only from a dead holder, or when nobody holds it, by compare-and-swap on the permit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use coderun_shared::runs::{self, Reason, Run, RunStatus};
use coderun_shared::semaphore::Grant;
use fred::prelude::KeysInterface;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::job::{self, run_of};
use super::logs::{self, StreamState};
use super::observe::{End, Observation, job_finished, observe};
use super::{Inner, KIND, outputs, outputs_key};
use crate::recorder::Ending;

/// How often every actor looks again, and ownership is refreshed.
const TICK: Duration = Duration::from_secs(1);
/// A Job not seen yet is not judged absent before this: the watch may simply lag its create.
const GONE_GRACE: Duration = Duration::from_secs(5);
/// How long a failed Pod waits for its Job's verdict (which tells a deadline from a failure).
const VERDICT_GRACE: Duration = Duration::from_secs(10);
/// Launched this long before a re-list began, a run whose Job the list lacks is judged.
const RELIST_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// Objects of one kind by run: the live view, and the view being rebuilt by a re-list.
pub(crate) struct Cache<K> {
    live: HashMap<Uuid, Arc<K>>,
    relisting: Option<HashMap<Uuid, Arc<K>>>,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Self {
            live: HashMap::new(),
            relisting: None,
        }
    }
}

impl<K: Resource> Cache<K> {
    /// The newest object of a run wins (a run has one Job, and normally one Pod).
    fn put(map: &mut HashMap<Uuid, Arc<K>>, run: Uuid, object: K) {
        let replace = map.get(&run).is_none_or(|old| {
            old.meta().name == object.meta().name
                || old.meta().creation_timestamp <= object.meta().creation_timestamp
        });
        if replace {
            map.insert(run, Arc::new(object));
        }
    }

    fn apply(&mut self, run: Uuid, object: K) {
        Self::put(&mut self.live, run, object);
    }

    fn delete(&mut self, run: Uuid, object: &K) {
        if self
            .live
            .get(&run)
            .is_some_and(|o| o.meta().name == object.meta().name)
        {
            self.live.remove(&run);
        }
    }

    fn init(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    fn init_apply(&mut self, run: Uuid, object: K) {
        Self::put(self.relisting.get_or_insert_with(HashMap::new), run, object);
    }

    /// Swaps in the re-listed view; returns every run present before or after.
    fn init_done(&mut self) -> Vec<Uuid> {
        let listed = self.relisting.take().unwrap_or_default();
        let old = std::mem::replace(&mut self.live, listed);
        old.into_keys()
            .chain(self.live.keys().copied())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect()
    }

    pub(crate) fn get(&self, run: Uuid) -> Option<Arc<K>> {
        self.live.get(&run).cloned()
    }
}

/// Who holds which permit, and which holders are alive.
#[derive(Default)]
pub(crate) struct Owners {
    of: HashMap<String, String>,
    alive: HashSet<String>,
}

/// Counts a run being finished for as long as it lives.
struct Finishing<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Finishing<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Finishing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    /// Watches until `shutdown`; then every actor stops too.
    pub(super) async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let config = watcher::Config::default().labels(job::SELECTOR);
        let mut jobs = watcher(self.jobs.clone(), config.clone())
            .default_backoff()
            .boxed();
        let mut pods = watcher(self.pods.clone(), config).default_backoff().boxed();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut relist_started = Utc::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = jobs.next() => match event {
                    Some(Ok(event)) => self.on_job(event, &mut relist_started, &shutdown),
                    Some(Err(e)) => tracing::warn!(error = %e, "watching Jobs failed; retrying"),
                    None => break,
                },
                event = pods.next() => match event {
                    Some(Ok(event)) => self.on_pod(event, &shutdown),
                    Some(Err(e)) => tracing::warn!(error = %e, "watching Pods failed; retrying"),
                    None => break,
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    fn on_job(
        self: &Arc<Self>,
        event: watcher::Event<Job>,
        relist_started: &mut chrono::DateTime<Utc>,
        shutdown: &CancellationToken,
    ) {
        let mut cache = self.job_cache.lock().expect("job cache");
        match event {
            watcher::Event::Apply(job) => {
                if let Some(run) = run_of(&job.metadata) {
                    cache.apply(run, job);
                    drop(cache);
                    self.wake(run, shutdown);
                }
            }
            watcher::Event::Delete(job) => {
                if let Some(run) = run_of(&job.metadata) {
                    cache.delete(run, &job);
                    drop(cache);
                    self.wake(run, shutdown);
                }
            }
            watcher::Event::Init => {
                cache.init();
                self.synced.store(false, Ordering::SeqCst);
                *relist_started = Utc::now();
            }
            watcher::Event::InitApply(job) => {
                if let Some(run) = run_of(&job.metadata) {
                    cache.init_apply(run, job);
                }
            }
            watcher::Event::InitDone => {
                let touched = cache.init_done();
                drop(cache);
                self.synced.store(true, Ordering::SeqCst);
                tracing::debug!(jobs = touched.len(), "listed coderun's Jobs");
                for run in touched {
                    self.wake(run, shutdown);
                }
                tokio::spawn(
                    self.clone()
                        .judge_absent(*relist_started - RELIST_MARGIN, shutdown.clone()),
                );
            }
        }
    }

    fn on_pod(self: &Arc<Self>, event: watcher::Event<Pod>, shutdown: &CancellationToken) {
        let mut cache = self.pod_cache.lock().expect("pod cache");
        match event {
            watcher::Event::Apply(pod) => {
                if let Some(run) = run_of(&pod.metadata) {
                    cache.apply(run, pod);
                    drop(cache);
                    self.wake(run, shutdown);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(run) = run_of(&pod.metadata) {
                    cache.delete(run, &pod);
                    drop(cache);
                    self.wake(run, shutdown);
                }
            }
            watcher::Event::Init => cache.init(),
            watcher::Event::InitApply(pod) => {
                if let Some(run) = run_of(&pod.metadata) {
                    cache.init_apply(run, pod);
                }
            }
            watcher::Event::InitDone => {
                let touched = cache.init_done();
                drop(cache);
                for run in touched {
                    self.wake(run, shutdown);
                }
            }
        }
    }

    async fn on_tick(&self) {
        if let Err(e) = self.refresh_owners().await {
            tracing::warn!(error = %e, "cannot read the permits' holders");
        }
        let actors: Vec<Arc<Notify>> = self
            .actors
            .lock()
            .expect("actors")
            .values()
            .cloned()
            .collect();
        for notify in actors {
            notify.notify_one();
        }
        // Forget ended runs once their Jobs are certainly gone.
        let ttl = Duration::from_secs(u64::from(self.settings.ttl_seconds_after_finished) + 600);
        self.done
            .lock()
            .expect("done")
            .retain(|_, at| at.elapsed() < ttl);
    }

    /// Wakes the actor of `run`, starting one if there is none and the run is not known to
    /// have ended.
    fn wake(self: &Arc<Self>, run: Uuid, shutdown: &CancellationToken) {
        if self.done.lock().expect("done").contains_key(&run) {
            return;
        }
        let mut actors = self.actors.lock().expect("actors");
        if let Some(notify) = actors.get(&run) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        actors.insert(run, notify.clone());
        drop(actors);
        let actor = Actor {
            inner: self.clone(),
            id: run,
            notify,
            run: None,
            recorded: None,
            seen_job: false,
            started: Instant::now(),
            pull_since: None,
            failing_since: None,
            last_pod: None,
            streamer: None,
        };
        tokio::spawn(actor.run(shutdown.clone()));
    }

    fn mark_done(&self, run: Uuid) {
        self.done.lock().expect("done").insert(run, Instant::now());
    }

    async fn refresh_owners(&self) -> anyhow::Result<()> {
        let of: HashMap<String, String> = self
            .recorder
            .semaphore
            .holders()
            .await?
            .into_iter()
            .collect();
        let mut alive = HashSet::new();
        for owner in of.values().collect::<HashSet<_>>() {
            let exists: u64 = self.redis.exists(self.keys.heartbeat(owner)).await?;
            if exists > 0 {
                alive.insert(owner.clone());
            }
        }
        *self.owners.write().expect("owners") = Owners { of, alive };
        Ok(())
    }

    /// Whether this worker owns `run` now: it holds the run's permit, or has just taken it
    /// from a dead holder or from nobody. Never from a live holder.
    async fn claim(&self, run: &Run) -> bool {
        let key = run.id.to_string();
        let holder = {
            let owners = self.owners.read().expect("owners");
            match owners.of.get(&key) {
                Some(holder) if *holder == self.me => return true,
                Some(holder) if owners.alive.contains(holder) => return false,
                holder => holder.cloned(),
            }
        };
        let taken = self
            .recorder
            .semaphore
            .take_over(
                run.id,
                holder.as_deref().unwrap_or(""),
                &self.me,
                self.lease_ttl_ms(run),
                None,
            )
            .await;
        let holder = match taken {
            Ok(Grant::Granted) => {
                if let Some(dead) = &holder {
                    tracing::info!(run = %run.id, %dead, "adopted a run whose worker is gone");
                }
                self.me.clone()
            }
            Ok(Grant::HeldBy(holder)) => holder,
            Ok(Grant::Full) => return false,
            Err(e) => {
                tracing::warn!(run = %run.id, error = %e, "cannot claim the run's permit");
                return false;
            }
        };
        let mine = holder == self.me;
        self.owners.write().expect("owners").of.insert(key, holder);
        mine
    }

    /// Runs whose Job is active: not finished, not being deleted, its pod not ended, and not
    /// seen ended here (a permit renewed for an ended run would hold capacity until the
    /// reconciler gave it back).
    pub(super) fn live(&self) -> Vec<Uuid> {
        let done = self.done.lock().expect("done");
        let pods = self.pod_cache.lock().expect("pod cache");
        self.job_cache
            .lock()
            .expect("job cache")
            .live
            .iter()
            .filter(|(run, job)| {
                let pod_ended = pods.get(**run).is_some_and(|pod| {
                    matches!(
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                });
                !done.contains_key(run)
                    && !pod_ended
                    && !job_finished(job)
                    && job.metadata.deletion_timestamp.is_none()
            })
            .map(|(run, _)| *run)
            .collect()
    }

    pub(super) async fn exists(&self, run: Uuid) -> Option<bool> {
        if self.job_cache.lock().expect("job cache").get(run).is_some()
            || self.actors.lock().expect("actors").contains_key(&run)
        {
            // An observed run's actor judges its Job's absence itself (and keeps its log).
            return Some(true);
        }
        match self.jobs.get_opt(&job::job_name(run)).await {
            Ok(found) => Some(found.is_some()),
            Err(e) => {
                tracing::debug!(%run, error = %e, "cannot tell whether the Job exists");
                None
            }
        }
    }

    /// After a re-list: runs launched before it whose Job it lacks were deleted while nobody
    /// watched; their actors judge them.
    async fn judge_absent(
        self: Arc<Self>,
        listed_after: chrono::DateTime<Utc>,
        shutdown: CancellationToken,
    ) {
        let active = match runs::active(&self.recorder.db).await {
            Ok(active) => active,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list active runs after a re-list");
                return;
            }
        };
        for run in active {
            let launched_before = run.dispatched_at.is_some_and(|at| at < listed_after);
            if run.status == RunStatus::Queued
                || run.executor.as_deref() != Some(KIND)
                || !launched_before
                || self
                    .job_cache
                    .lock()
                    .expect("job cache")
                    .get(run.id)
                    .is_some()
            {
                continue;
            }
            self.wake(run.id, &shutdown);
        }
    }
}

/// What an actor does next.
enum Step {
    Continue,
    Done,
}

/// One run being observed by this worker.
struct Actor {
    inner: Arc<Inner>,
    id: Uuid,
    notify: Arc<Notify>,
    /// Loaded from Postgres on the first look.
    run: Option<Run>,
    /// The last phase this actor recorded.
    recorded: Option<RunStatus>,
    seen_job: bool,
    started: Instant,
    /// Since when an image cannot be pulled.
    pull_since: Option<Instant>,
    /// Since when the Pod has failed without the Job's verdict.
    failing_since: Option<Instant>,
    /// The newest Pod seen, kept after it vanished (it still tells how the run ended).
    last_pod: Option<Arc<Pod>>,
    streamer: Option<Streamer>,
}

struct Streamer {
    pod: String,
    task: JoinHandle<()>,
    state: Arc<StreamState>,
}

impl Actor {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            match self.step().await {
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

    fn stop_streamer(&mut self) {
        if let Some(streamer) = self.streamer.take() {
            streamer.task.abort();
        }
    }

    /// Marks the run ended for this worker.
    fn done(&self) -> Step {
        self.inner.mark_done(self.id);
        Step::Done
    }

    async fn step(&mut self) -> anyhow::Result<Step> {
        let inner = self.inner.clone();
        let run = match &self.run {
            Some(run) if run.status != RunStatus::Queued => run.clone(),
            _ => match runs::get(&inner.recorder.db, self.id).await? {
                Some(run) if !run.status.is_terminal() => {
                    self.run = Some(run.clone());
                    run
                }
                _ => return Ok(self.done()),
            },
        };
        if run.status == RunStatus::Queued {
            // Its launch (create, then `dispatched`) is under way: phases wait for it.
            return Ok(Step::Continue);
        }
        let job = inner.job_cache.lock().expect("job cache").get(self.id);
        let pod = inner.pod_cache.lock().expect("pod cache").get(self.id);
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
            && inner.claim(&run).await
        {
            let ending = Ending {
                status: RunStatus::Failed,
                exit_code: None,
                reason: Some(Reason::OutputLimitExceeded),
                detail: "killed: log limit exceeded".into(),
                log_bytes: None,
                log_truncated: true,
            };
            return self.finish(&run, ending, true).await;
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
                if since.elapsed() < timeout || !inner.claim(&run).await {
                    return Ok(Step::Continue);
                }
                tracing::info!(run = %self.id, %why, "giving up on an image that cannot be pulled");
                let ending = Ending {
                    status: RunStatus::Failed,
                    exit_code: None,
                    reason: Some(Reason::ImagePullFailed),
                    detail: format!("the image cannot be pulled: {why}"),
                    log_bytes: None,
                    log_truncated: false,
                };
                self.finish(&run, ending, true).await
            }
            Observation::Running => {
                self.record(RunStatus::Running, "the program started")
                    .await?;
                if inner.claim(&run).await {
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

    /// The execution is over: the owner finishes the run.
    async fn ended(&mut self, run: &Run, end: End) -> anyhow::Result<Step> {
        let inner = self.inner.clone();
        if inner.claim(run).await {
            return self.finish(run, ending_of(&end), false).await;
        }
        // The owner finishes it; look at Postgres only to stop looking.
        match runs::get(&inner.recorder.db, self.id).await? {
            Some(now) if !now.status.is_terminal() => Ok(Step::Continue),
            _ => Ok(self.done()),
        }
    }

    /// Records `phase` once per actor (the recorder makes repeats no-ops anyway).
    async fn record(&mut self, phase: RunStatus, detail: &str) -> anyhow::Result<()> {
        let rank = |s: RunStatus| match s {
            RunStatus::Pending => 1,
            RunStatus::Running => 2,
            _ => 0,
        };
        if self.recorded.is_some_and(|r| rank(r) >= rank(phase)) {
            return Ok(());
        }
        self.inner.recorder.phase(self.id, phase, detail).await?;
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
            self.inner.pods.clone(),
            pod.clone(),
            self.inner.recorder.clone(),
            run.id,
            self.inner.runs.log_max_bytes,
            state.clone(),
            self.notify.clone(),
        ));
        self.streamer = Some(Streamer { pod, task, state });
    }

    /// The Job is not there (deleted, or never seen).
    async fn gone(&mut self, run: &Run) -> anyhow::Result<Step> {
        let inner = self.inner.clone();
        if !self.seen_job
            && (!inner.synced.load(Ordering::SeqCst) || self.started.elapsed() < GONE_GRACE)
        {
            return Ok(Step::Continue);
        }
        let now = match runs::get(&inner.recorder.db, self.id).await? {
            Some(now) if !now.status.is_terminal() => now,
            _ => return Ok(self.done()),
        };
        if now.status == RunStatus::Queued {
            // Not launched (again) yet: its next Job wakes a new actor.
            return Ok(Step::Done);
        }
        if !inner.claim(run).await {
            return Ok(Step::Continue);
        }
        // The cache may lag; ask the API server before judging.
        if inner.jobs.get_opt(&job::job_name(self.id)).await?.is_some() {
            return Ok(Step::Continue);
        }
        let ending = if now.status == RunStatus::Stopping {
            Ending {
                status: RunStatus::Stopped,
                exit_code: None,
                reason: Some(Reason::StoppedByUser),
                detail: "stopped: its Job was deleted".into(),
                log_bytes: None,
                log_truncated: false,
            }
        } else {
            tracing::warn!(run = %self.id, "the run's Job is gone");
            Ending {
                status: RunStatus::Failed,
                exit_code: None,
                reason: Some(Reason::ExecutorLost),
                detail: "its Job disappeared".into(),
                log_bytes: None,
                log_truncated: false,
            }
        };
        self.finish(run, ending, false).await
    }

    /// Stores the log and the outputs, then records the end and gives the permit back. With
    /// `delete`, the Job is deleted once its log is read (the run is being ended by coderun).
    async fn finish(
        &mut self,
        run: &Run,
        mut ending: Ending,
        delete: bool,
    ) -> anyhow::Result<Step> {
        let inner = self.inner.clone();
        match runs::get(&inner.recorder.db, self.id).await? {
            Some(now) if !now.status.is_terminal() => {}
            _ => {
                // Someone else finished it (and released its permit, which a claim may have
                // just re-created).
                inner
                    .recorder
                    .semaphore
                    .release(&self.id.to_string())
                    .await?;
                return Ok(self.done());
            }
        }
        let _finishing = Finishing::new(&inner.finishing);
        self.stop_streamer();
        let cap = inner.runs.log_max_bytes;
        let pod = self.last_pod.as_ref().and_then(|p| p.metadata.name.clone());
        let from_pod = match &pod {
            Some(pod) => match logs::read_all(&inner.pods, pod, cap).await {
                Ok(log) => Some(log),
                Err(e) => {
                    tracing::debug!(run = %self.id, error = %e, "the pod's log cannot be read; using the live log");
                    None
                }
            },
            None => None,
        };
        let (log, truncated) = match from_pod {
            Some(log) => log,
            None => logs::from_live_log(&inner.recorder, self.id, cap).await?,
        };
        if delete {
            inner.delete_job(self.id).await?;
        }
        ending.log_bytes = Some(log.len() as i64);
        ending.log_truncated |= truncated;
        inner.recorder.store_log_bytes(self.id, log).await?;
        if let Some(refused) = self.store_outputs().await? {
            // The program's own verdict stays if it already failed with a reason.
            if ending.reason.is_none() {
                ending.status = RunStatus::Failed;
                ending.reason = Some(Reason::OutputLimitExceeded);
            }
            ending.detail = format!("{}; {refused}", ending.detail);
        }
        let status = ending.status;
        let ended = inner.recorder.finish(self.id, ending).await?;
        tracing::info!(run = %run.id, ?status, ?ended, "finished the run");
        Ok(self.done())
    }

    /// Unpacks the archive the pod uploaded into `runs/{id}/output/…` and lists the files.
    /// An archive over the outputs limit is refused whole: nothing is stored, and the refusal
    /// is returned for the run's ending.
    async fn store_outputs(&self) -> anyhow::Result<Option<outputs::Refused>> {
        let inner = &self.inner;
        let key = outputs_key(self.id);
        let dir = std::env::temp_dir().join(format!(
            "coderun-outputs-{}-{}",
            self.id,
            Uuid::new_v4().simple()
        ));
        tokio::fs::create_dir_all(&dir).await?;
        let fetched = outputs::fetch(
            &inner.recorder.storage,
            &key,
            &dir,
            inner.runs.output_max_files as usize,
            inner.runs.output_max_bytes,
            &inner.paths,
        )
        .await;
        let (stored, refused) = match fetched {
            Ok(outputs::Fetched::Missing) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Ok(None);
            }
            Ok(outputs::Fetched::Unpacked(unpacked)) => {
                if !unpacked.skipped.is_empty() {
                    tracing::warn!(run = %self.id, skipped = ?unpacked.skipped, "left some outputs out");
                }
                (
                    inner.recorder.store_outputs(self.id, &unpacked.files).await,
                    None,
                )
            }
            Ok(outputs::Fetched::Refused(refused)) => {
                tracing::warn!(run = %self.id, %refused, "refused the outputs archive");
                (Ok(()), Some(refused))
            }
            Ok(outputs::Fetched::Unreadable(e)) => {
                tracing::warn!(run = %self.id, error = %e, "the outputs archive is unreadable");
                (Ok(()), None)
            }
            Err(e) => (Err(e), None),
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        stored?;
        inner.recorder.storage.delete_prefix(&key).await?;
        Ok(refused)
    }
}

fn ending_of(end: &End) -> Ending {
    let (status, exit_code, reason, detail) = end.outcome();
    Ending {
        status,
        exit_code,
        reason,
        detail,
        log_bytes: None,
        log_truncated: false,
    }
}
