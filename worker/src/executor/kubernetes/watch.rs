//! Watching coderun's Jobs and Pods, and waking the task that observes each run.
//!
//! Two `kube::runtime` reflectors (a watcher with the default backoff, selected by coderun's
//! label, feeding a [`Store`]) hold what the API server last said about every Job and Pod. A
//! watch that breaks or expires (410 Gone) re-lists, and the store swaps the listed objects in
//! whole at `InitDone`: deletions that happened in the gap show as absence — so after every
//! re-list, runs active in Postgres whose Job is absent are judged.
//!
//! The stores hold trimmed objects ([`trim_job`], [`trim_pod`]): what the watch and the
//! actors read — names, labels, timestamps, the Job's conditions, the Pod's phase and container
//! states — and not the specs (the pod template, its presigned URLs and scripts), managed
//! fields or annotations, which made up most of each object and so most of a worker's memory
//! with a thousand Jobs running.
//!
//! Each run being observed has one task (an [`Actor`](super::actor::Actor)) that re-reads its
//! run's Job and Pod from the stores whenever either changes, and every tick (ownership moves,
//! image-pull timeouts).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use coderun_shared::config::ExecutorKind;
use coderun_shared::runs::RunStatus;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Inner;
use super::actor::Actor;
use super::job::{self, run_of};
use super::observe::job_finished;

/// How often every actor looks again, and ownership is refreshed.
const TICK: Duration = Duration::from_secs(1);
/// Launched this long before a re-list began, a run whose Job the list lacks is judged.
const RELIST_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// What the reflectors know about coderun's Jobs and Pods.
#[derive(Clone)]
pub(super) struct Stores {
    pub(super) jobs: Store<Job>,
    pub(super) pods: Store<Pod>,
    namespace: String,
    /// The names of each run's Pods, kept by the watch loop beside the pod store
    /// ([`Stores::note_pod`]): the store is keyed by pod name, and looking a run's Pod up by
    /// scanning it made every actor's step cost a pass over all Pods — with 2,000 Jobs and
    /// every actor looking each second, most of a worker's CPU.
    pod_names: Arc<Mutex<HashMap<Uuid, Vec<String>>>>,
}

/// The write halves of [`Stores`], taken by the one watch loop.
pub(super) struct Writers {
    jobs: reflector::store::Writer<Job>,
    pods: reflector::store::Writer<Pod>,
}

/// Empty stores for `namespace`, and their writers.
pub(super) fn stores(namespace: &str) -> (Stores, Writers) {
    let (jobs, job_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    (
        Stores {
            jobs,
            pods,
            namespace: namespace.to_owned(),
            pod_names: Arc::default(),
        },
        Writers {
            jobs: job_writer,
            pods: pod_writer,
        },
    )
}

impl Stores {
    /// The run's Job, as last seen.
    pub(super) fn job(&self, run: Uuid) -> Option<Arc<Job>> {
        self.jobs
            .get(&ObjectRef::new(&job::job_name(run)).within(&self.namespace))
    }

    /// The run's newest Pod, as last seen (a run has normally one).
    pub(super) fn pod(&self, run: Uuid) -> Option<Arc<Pod>> {
        let names = self
            .pod_names
            .lock()
            .expect("pod names")
            .get(&run)
            .cloned()?;
        names
            .iter()
            .filter_map(|name| self.pods.get(&ObjectRef::new(name).within(&self.namespace)))
            .max_by(|a, b| {
                a.metadata
                    .creation_timestamp
                    .cmp(&b.metadata.creation_timestamp)
            })
    }

    /// Keeps the run → pod names index in step with a pod event the store has applied: an
    /// applied Pod is named under its run, a deleted one forgotten, and the end of a re-list
    /// rebuilds the index from the store (which has just swapped in the listed Pods).
    pub(super) fn note_pod(&self, event: &watcher::Event<Pod>) {
        let mut index = self.pod_names.lock().expect("pod names");
        match event {
            watcher::Event::Apply(pod) => {
                if let (Some(run), Some(name)) = (run_of(&pod.metadata), &pod.metadata.name) {
                    let names = index.entry(run).or_default();
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let (Some(run), Some(name)) = (run_of(&pod.metadata), &pod.metadata.name)
                    && let Some(names) = index.get_mut(&run)
                {
                    names.retain(|n| n != name);
                    if names.is_empty() {
                        index.remove(&run);
                    }
                }
            }
            watcher::Event::InitDone => {
                index.clear();
                for pod in self.pods.state() {
                    if let (Some(run), Some(name)) = (run_of(&pod.metadata), &pod.metadata.name) {
                        index.entry(run).or_default().push(name.clone());
                    }
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    /// The newest Pod of every run, in one pass.
    fn newest_pods(&self) -> HashMap<Uuid, Arc<Pod>> {
        let mut newest: HashMap<Uuid, Arc<Pod>> = HashMap::new();
        for pod in self.pods.state() {
            let Some(run) = run_of(&pod.metadata) else {
                continue;
            };
            if newest.get(&run).is_none_or(|old| {
                old.metadata.creation_timestamp <= pod.metadata.creation_timestamp
            }) {
                newest.insert(run, pod);
            }
        }
        newest
    }
}

/// The object metadata the watch and the actors read: name, namespace, uid, labels (the run id),
/// creation and deletion timestamps.
fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
}

/// A Job as the stores keep it: its metadata and its conditions (the verdict).
pub(super) fn trim_job(job: &mut Job) {
    trim_meta(&mut job.metadata);
    job.spec = None;
    if let Some(status) = job.status.as_mut() {
        let conditions = status.conditions.take();
        *status = JobStatus {
            conditions,
            ..JobStatus::default()
        };
        for condition in status.conditions.iter_mut().flatten() {
            condition.message = None;
        }
    }
}

/// A Pod as the stores keep it: its metadata, phase, reason, message, conditions and container
/// states (which tell the run's phase, its exit code, an OOM kill, an eviction, an image that
/// cannot be pulled).
pub(super) fn trim_pod(pod: &mut Pod) {
    trim_meta(&mut pod.metadata);
    pod.spec = None;
    if let Some(status) = pod.status.as_mut() {
        let trimmed = PodStatus {
            phase: status.phase.take(),
            reason: status.reason.take(),
            message: status.message.take(),
            conditions: status.conditions.take(),
            container_statuses: status.container_statuses.take(),
            init_container_statuses: status.init_container_statuses.take(),
            ..PodStatus::default()
        };
        *status = trimmed;
        let containers = status
            .container_statuses
            .iter_mut()
            .chain(status.init_container_statuses.iter_mut())
            .flatten();
        for container in containers {
            container.image_id = String::new();
            container.container_id = None;
            container.resources = None;
            container.volume_mounts = None;
            container.allocated_resources = None;
            container.allocated_resources_status = None;
            container.user = None;
        }
    }
}

impl Inner {
    /// Watches until `shutdown`; then every actor stops too.
    pub(super) async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(writers) = self.writers.lock().expect("writers").take() else {
            tracing::error!("the Kubernetes watchers run already");
            return;
        };
        let config = watcher::Config::default().labels(job::SELECTOR);
        let mut jobs = reflector::reflector(
            writers.jobs,
            watcher(self.jobs.clone(), config.clone())
                .modify(trim_job)
                .default_backoff(),
        )
        .boxed();
        let mut pods = reflector::reflector(
            writers.pods,
            watcher(self.pods.clone(), config)
                .modify(trim_pod)
                .default_backoff(),
        )
        .boxed();
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
        match event {
            watcher::Event::Apply(job) | watcher::Event::Delete(job) => {
                if let Some(run) = run_of(&job.metadata) {
                    self.wake(run, shutdown);
                }
            }
            watcher::Event::Init => {
                self.synced.store(false, Ordering::SeqCst);
                *relist_started = Utc::now();
            }
            watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                self.synced.store(true, Ordering::SeqCst);
                let listed = self.stores.jobs.state();
                tracing::debug!(jobs = listed.len(), "listed coderun's Jobs");
                self.wake_all(listed.iter().filter_map(|j| run_of(&j.metadata)), shutdown);
                tokio::spawn(
                    self.clone()
                        .judge_absent(*relist_started - RELIST_MARGIN, shutdown.clone()),
                );
            }
        }
    }

    fn on_pod(self: &Arc<Self>, event: watcher::Event<Pod>, shutdown: &CancellationToken) {
        self.stores.note_pod(&event);
        match event {
            watcher::Event::Apply(pod) | watcher::Event::Delete(pod) => {
                if let Some(run) = run_of(&pod.metadata) {
                    self.wake(run, shutdown);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                let listed = self.stores.pods.state();
                self.wake_all(listed.iter().filter_map(|p| run_of(&p.metadata)), shutdown);
            }
        }
    }

    /// After a re-list: every run listed, and every run being observed (whose object may have
    /// vanished in the gap), looks again.
    fn wake_all(
        self: &Arc<Self>,
        listed: impl Iterator<Item = Uuid>,
        shutdown: &CancellationToken,
    ) {
        for run in listed {
            self.wake(run, shutdown);
        }
        self.notify_actors();
    }

    fn notify_actors(&self) {
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
    }

    async fn on_tick(&self) {
        if let Err(e) = self.ownership.refresh(&self.supervisor).await {
            tracing::warn!(error = %e, "cannot read the permits' holders");
        }
        self.notify_actors();
        // Forget ended runs once their Jobs are certainly gone.
        let ttl = Duration::from_secs(u64::from(self.settings.ttl_seconds_after_finished) + 600);
        self.done
            .lock()
            .expect("done")
            .retain(|_, at| at.elapsed() < ttl);
        self.launched
            .lock()
            .expect("launched")
            .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
    }

    /// Wakes the actor of `run`, starting one if there is none and the run is not known to
    /// have ended.
    pub(super) fn wake(self: &Arc<Self>, run: Uuid, shutdown: &CancellationToken) {
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
        tokio::spawn(Actor::new(self.clone(), run, notify).run(shutdown.clone()));
    }

    pub(super) fn mark_done(&self, run: Uuid) {
        self.done.lock().expect("done").insert(run, Instant::now());
    }

    /// Runs whose Job is active: not finished, not being deleted, its pod not ended, and not
    /// seen ended here (a permit renewed for an ended run would hold capacity until the
    /// reconciler gave it back).
    pub(super) fn live(&self) -> Vec<Uuid> {
        let done = self.done.lock().expect("done");
        let pods = self.stores.newest_pods();
        self.stores
            .jobs
            .state()
            .iter()
            .filter_map(|job| {
                let run = run_of(&job.metadata)?;
                let pod_ended = pods.get(&run).is_some_and(|pod| {
                    matches!(
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                });
                let active = !done.contains_key(&run)
                    && !pod_ended
                    && !job_finished(job)
                    && job.metadata.deletion_timestamp.is_none();
                active.then_some(run)
            })
            .collect()
    }

    pub(super) async fn exists(&self, run: Uuid) -> Option<bool> {
        if self.stores.job(run).is_some() || self.actors.lock().expect("actors").contains_key(&run)
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
        let active = match self.supervisor.active_runs().await {
            Ok(active) => active,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list active runs after a re-list");
                return;
            }
        };
        for run in active {
            let launched_before = run.dispatched_at.is_some_and(|at| at < listed_after);
            if run.status == RunStatus::Queued
                || run.executor.as_deref() != Some(ExecutorKind::Kubernetes.as_str())
                || !launched_before
                || self.stores.job(run.id).is_some()
            {
                continue;
            }
            self.wake(run.id, &shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::kubernetes::observe::observe;
    use serde_json::json;

    fn labelled<K: serde::de::DeserializeOwned>(name: &str, run: Uuid, created: &str) -> K {
        serde_json::from_value(json!({"metadata": {
            "name": name, "namespace": "jobs", "creationTimestamp": created,
            "labels": {job::RUN_ID: run.to_string()}
        }}))
        .unwrap()
    }

    #[test]
    fn a_runs_newest_pod_is_its_pod_and_a_relist_forgets_what_vanished_in_the_gap() {
        let (stores, mut writers) = stores("jobs");
        let run = Uuid::new_v4();
        let old: Pod = labelled("run-a", run, "2026-01-01T00:00:00Z");
        let new: Pod = labelled("run-b", run, "2026-01-01T00:01:00Z");
        for pod in [&new, &old] {
            let event = watcher::Event::Apply(pod.clone());
            writers.pods.apply_watcher_event(&event);
            stores.note_pod(&event);
        }
        assert_eq!(
            stores.pod(run).unwrap().metadata.name.as_deref(),
            Some("run-b")
        );
        let job: Job = labelled(&job::job_name(run), run, "2026-01-01T00:00:00Z");
        writers
            .jobs
            .apply_watcher_event(&watcher::Event::Apply(job));
        assert!(stores.job(run).is_some());
        assert_eq!(stores.newest_pods().len(), 1);

        // The Job was deleted while the watch was down: the re-list lacks it, and only at its
        // end does the store forget it.
        writers.jobs.apply_watcher_event(&watcher::Event::Init);
        assert!(stores.job(run).is_some());
        writers.jobs.apply_watcher_event(&watcher::Event::InitDone);
        assert!(stores.job(run).is_none());

        // The pods' index follows deletions, and a re-list that lacks a pod forgets it.
        let event = watcher::Event::Delete(new.clone());
        writers.pods.apply_watcher_event(&event);
        stores.note_pod(&event);
        assert_eq!(
            stores.pod(run).unwrap().metadata.name.as_deref(),
            Some("run-a")
        );
        let other = Uuid::new_v4();
        let listed: Pod = labelled("other-a", other, "2026-01-01T00:02:00Z");
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(listed),
            watcher::Event::InitDone,
        ] {
            writers.pods.apply_watcher_event(&event);
            stores.note_pod(&event);
        }
        assert!(stores.pod(run).is_none());
        assert_eq!(
            stores.pod(other).unwrap().metadata.name.as_deref(),
            Some("other-a")
        );
    }

    /// A Job as the API server holds it: the built Job (its pod template with the presigned
    /// URLs and scripts), managed fields, annotations and `status`.
    fn served_job(run: Uuid, conditions: serde_json::Value) -> Job {
        let mut sample = job::sample_run();
        sample.id = run;
        let built = job::build(
            &sample,
            &coderun_shared::config::Settings::with_overrides([("local_stack", "true".to_owned())])
                .unwrap()
                .kubernetes,
            &job::sample_urls(&sample),
        );
        let mut value = serde_json::to_value(built).unwrap();
        value["metadata"]["namespace"] = json!("jobs");
        value["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        value["metadata"]["uid"] = json!("0d6c7e0a-0000-0000-0000-000000000001");
        value["metadata"]["annotations"] = json!({"batch.kubernetes.io/job-tracking": ""});
        value["metadata"]["managedFields"] = json!([{
            "manager": "coderun-worker", "operation": "Update", "apiVersion": "batch/v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:template": {}}}
        }]);
        value["status"] = json!({"active": 1, "startTime": "2026-01-01T00:00:01Z",
            "ready": 0, "uncountedTerminatedPods": {}, "conditions": conditions});
        serde_json::from_value(value).unwrap()
    }

    /// The Job's Pod as the API server holds it, with `status`.
    fn served_pod(job: &Job, status: serde_json::Value) -> Pod {
        let template = job.spec.as_ref().unwrap().template.clone();
        let mut meta = template.metadata.unwrap_or_default();
        meta.name = Some(format!("{}-abcde", job.metadata.name.as_deref().unwrap()));
        meta.namespace = Some("jobs".into());
        meta.creation_timestamp = job.metadata.creation_timestamp.clone();
        meta.deletion_timestamp = job.metadata.deletion_timestamp.clone();
        meta.managed_fields = job.metadata.managed_fields.clone();
        let mut value = serde_json::to_value(Pod {
            metadata: meta,
            spec: template.spec,
            status: None,
        })
        .unwrap();
        value["status"] = status;
        serde_json::from_value(value).unwrap()
    }

    fn container(name: &str, state: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "image": format!("{name}:1"), "imageID": "docker-pullable://x@sha256:0",
               "containerID": "containerd://abc", "ready": false, "restartCount": 0,
               "state": state, "lastState": {},
               "volumeMounts": [{"name": "work", "mountPath": "/work"}],
               "resources": {"limits": {"memory": "256Mi"}}})
    }

    #[test]
    fn a_trimmed_job_and_pod_tell_everything_the_watch_and_the_actors_read() {
        let run = Uuid::new_v4();
        let failed = json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                             "message": "Job has reached the specified backoff limit"}]);
        let deadline = json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]);
        let complete = json!([{"type": "Complete", "status": "True"}]);
        let jobs = [json!([]), failed, deadline, complete];
        let pods = [
            json!({"phase": "Pending", "hostIP": "10.0.0.1", "podIPs": [{"ip": "10.1.0.1"}],
                   "initContainerStatuses": [container("fetch",
                       json!({"waiting": {"reason": "ImagePullBackOff", "message": "back-off"}}))]}),
            json!({"phase": "Running", "containerStatuses": [container("main",
                json!({"running": {"startedAt": "2026-01-01T00:00:02Z"}}))]}),
            json!({"phase": "Failed", "containerStatuses": [container("main",
                json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}}))]}),
            json!({"phase": "Failed", "reason": "Evicted", "message": "low on ephemeral storage"}),
            json!({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True",
                   "reason": "PreemptionByScheduler", "message": "preempted"}]}),
            json!({"phase": "Failed", "initContainerStatuses": [container("fetch",
                json!({"terminated": {"exitCode": 22, "message": "curl: (22) 403"}}))]}),
            json!({"phase": "Succeeded", "containerStatuses": [container("main",
                json!({"terminated": {"reason": "Completed", "exitCode": 0}}))]}),
        ];
        for conditions in &jobs {
            let job = served_job(run, conditions.clone());
            let mut trimmed_job = job.clone();
            trim_job(&mut trimmed_job);
            assert_eq!(observe(&trimmed_job, None), observe(&job, None));
            assert_eq!(job_finished(&trimmed_job), job_finished(&job));
            for status in &pods {
                let pod = served_pod(&job, status.clone());
                let mut trimmed_pod = pod.clone();
                trim_pod(&mut trimmed_pod);
                assert_eq!(
                    observe(&trimmed_job, Some(&trimmed_pod)),
                    observe(&job, Some(&pod)),
                    "{conditions} / {status}"
                );
                for (trimmed, served) in [(&trimmed_pod.metadata, &pod.metadata)] {
                    assert_eq!(run_of(trimmed), Some(run));
                    assert_eq!(trimmed.name, served.name);
                    assert_eq!(trimmed.creation_timestamp, served.creation_timestamp);
                }
            }
            let (trimmed, served) = (&trimmed_job.metadata, &job.metadata);
            assert_eq!(run_of(trimmed), Some(run));
            assert_eq!(
                (&trimmed.name, &trimmed.namespace, &trimmed.uid),
                (&served.name, &served.namespace, &served.uid)
            );
            assert_eq!(trimmed.creation_timestamp, served.creation_timestamp);
        }

        // What the stores hold per run is a small part of what the API server serves.
        let job = served_job(run, json!([]));
        let pod = served_pod(&job, pods[1].clone());
        let (mut small_job, mut small_pod) = (job.clone(), pod.clone());
        trim_job(&mut small_job);
        trim_pod(&mut small_pod);
        let served = json_len(&job) + json_len(&pod);
        let kept = json_len(&small_job) + json_len(&small_pod);
        println!("a Job and its Pod: {served} bytes as served, {kept} kept");
        assert!(kept * 5 < served, "kept {kept} of {served} bytes");
    }

    #[test]
    fn a_deleted_job_stays_deleted_when_trimmed() {
        let run = Uuid::new_v4();
        let mut job = served_job(run, json!([]));
        job.metadata.deletion_timestamp = job.metadata.creation_timestamp.clone();
        trim_job(&mut job);
        assert!(job.metadata.deletion_timestamp.is_some());
        // And the stores take trimmed objects as they take whole ones.
        let (stores, mut writers) = stores("jobs");
        writers
            .jobs
            .apply_watcher_event(&watcher::Event::Apply(job));
        assert!(stores.job(run).is_some());
    }

    /// Serialised length, to compare sizes.
    fn json_len(value: &impl serde::Serialize) -> usize {
        serde_json::to_vec(value).unwrap().len()
    }
}
