//! Reading a run's phase from its Job and Pod: a pure function, so every signal Kubernetes
//! gives about a Job (deadline, eviction, OOM, exit code, image pulls) has a unit test. What
//! the run's status and reason become is decided once for every executor, in
//! [`crate::ending`].
//!
//! Precedence when several signals are present: the Job's `DeadlineExceeded` (read from the
//! Job, never the Pod), then eviction (the Pod's reason `Evicted` or a `DisruptionTarget`
//! condition), then the main container's `OOMKilled`, then its exit code.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::job::{FETCH, MAIN};
use crate::ending::Termination;

/// Waiting reasons of a container whose image cannot be had.
const PULL_FAILURES: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// What the Job and its Pod say about the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The Job exists; its Pod does not yet.
    Waiting,
    /// The Pod waits (scheduling, image pull, the fetch step); `pull_failure` names an image
    /// that cannot be pulled right now.
    Pending { pull_failure: Option<String> },
    /// The program runs.
    Running,
    /// The execution is over.
    Ended(Termination),
    /// The Pod failed but the Job has no verdict yet: its condition, which alone tells a
    /// deadline from a failure, is normally a moment away.
    Failing(Termination),
}

/// The run's state from its Job and (newest) Pod.
pub fn observe(job: &Job, pod: Option<&Pod>) -> Observation {
    if let Some(reason) = job_failed(job)
        && reason == "DeadlineExceeded"
    {
        return Observation::Ended(Termination::DeadlineExceeded);
    }
    let Some(pod) = pod else {
        return match (job_failed(job), job_complete(job)) {
            (Some(reason), _) => Observation::Ended(Termination::ExecutionFailed(reason)),
            (None, true) => Observation::Ended(Termination::Exited(0)),
            (None, false) => Observation::Waiting,
        };
    };
    let status = pod.status.clone().unwrap_or_default();
    let verdict = job_failed(job).is_some();
    let end = || eviction(pod).map_or_else(|| failure(pod), Termination::Evicted);
    match status.phase.as_deref().unwrap_or("Pending") {
        "Succeeded" => Observation::Ended(Termination::Exited(0)),
        "Failed" if verdict => Observation::Ended(end()),
        "Failed" => Observation::Failing(end()),
        _ if verdict => Observation::Ended(end()),
        "Running" => Observation::Running,
        _ => Observation::Pending {
            pull_failure: pull_failure(pod),
        },
    }
}

/// The reason of the Job's `Failed` condition, when it has one.
fn job_failed(job: &Job) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_else(|| "Failed".into()))
}

fn job_complete(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

/// Whether the Job is over (for the executor's list of live runs).
pub fn job_finished(job: &Job) -> bool {
    job_failed(job).is_some() || job_complete(job)
}

/// Why the Pod was evicted or disrupted, if it was.
fn eviction(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.reason.as_deref() == Some("Evicted") {
        return Some(
            status
                .message
                .clone()
                .unwrap_or_else(|| "the node evicted the pod".into()),
        );
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        .map(|c| {
            c.message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_else(|| "the pod was disrupted".into())
        })
}

fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == MAIN)
}

/// Why a failed Pod failed.
fn failure(pod: &Pod) -> Termination {
    let status = pod.status.as_ref();
    if status.and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded") {
        return Termination::DeadlineExceeded;
    }
    let terminated = main_status(pod)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| {
            main_status(pod)
                .and_then(|c| c.last_state.as_ref())
                .and_then(|s| s.terminated.as_ref())
        });
    if let Some(terminated) = terminated {
        if terminated.reason.as_deref() == Some("OOMKilled") {
            return Termination::OomKilled;
        }
        return Termination::Exited(terminated.exit_code);
    }
    let fetch = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == FETCH))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .filter(|t| t.exit_code != 0);
    if let Some(fetch) = fetch {
        return Termination::FetchFailed(format!(
            "exit code {}{}",
            fetch.exit_code,
            fetch
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    Termination::ExecutionFailed(
        status
            .and_then(|s| s.message.clone().or_else(|| s.reason.clone()))
            .unwrap_or_else(|| "the pod failed before the program started".into()),
    )
}

/// `container: reason (image)` of the first container whose image cannot be pulled.
fn pull_failure(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            PULL_FAILURES
                .contains(&reason)
                .then(|| format!("{}: {reason} ({})", c.name, c.image))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ending::Ending;
    use coderun_shared::runs::{Reason, RunStatus};
    use serde_json::json;

    fn job(conditions: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "run-x"},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "run-x-abcde"}, "status": status}))
            .unwrap()
    }

    /// A Job the job controller has failed (its pod failed, `backoffLimit: 0`).
    fn failed_job() -> Job {
        job(json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]))
    }

    fn terminated(reason: &str, code: i32) -> serde_json::Value {
        json!([{"name": "main", "image": "python", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"reason": reason, "exitCode": code}}}])
    }

    #[test]
    fn a_job_without_a_pod_is_waiting() {
        assert_eq!(observe(&job(json!([])), None), Observation::Waiting);
    }

    #[test]
    fn a_pending_pod_is_pending_and_names_an_image_it_cannot_pull() {
        let j = job(json!([]));
        assert_eq!(
            observe(&j, Some(&pod(json!({"phase": "Pending"})))),
            Observation::Pending { pull_failure: None }
        );
        let pulling = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "main", "image": "python:3.99", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off"}}}]}));
        assert_eq!(
            observe(&j, Some(&pulling)),
            Observation::Pending {
                pull_failure: Some("main: ImagePullBackOff (python:3.99)".into())
            }
        );
    }

    #[test]
    fn a_running_pod_is_running() {
        let p = pod(json!({"phase": "Running"}));
        assert_eq!(observe(&job(json!([])), Some(&p)), Observation::Running);
    }

    #[test]
    fn a_succeeded_pod_succeeded_and_a_failed_one_reports_its_exit_code() {
        let ok =
            pod(json!({"phase": "Succeeded", "containerStatuses": terminated("Completed", 0)}));
        assert_eq!(
            observe(&job(json!([])), Some(&ok)),
            Observation::Ended(Termination::Exited(0))
        );
        let failed = pod(json!({"phase": "Failed", "containerStatuses": terminated("Error", 3)}));
        assert_eq!(
            observe(&failed_job(), Some(&failed)),
            Observation::Ended(Termination::Exited(3))
        );
        assert_eq!(
            Ending::from(Termination::Exited(3)).status,
            RunStatus::Failed
        );
        assert_eq!(
            Ending::from(Termination::Exited(0)).status,
            RunStatus::Succeeded
        );
    }

    #[test]
    fn oom_comes_from_the_containers_termination_reason() {
        let p = pod(json!({"phase": "Failed", "containerStatuses": terminated("OOMKilled", 137)}));
        assert_eq!(
            observe(&failed_job(), Some(&p)),
            Observation::Ended(Termination::OomKilled)
        );
        assert_eq!(
            Ending::from(Termination::OomKilled).reason,
            Some(Reason::OomKilled)
        );
    }

    #[test]
    fn the_deadline_comes_from_the_jobs_condition_and_wins_over_the_pods_exit() {
        let j = job(json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]));
        let killed = pod(json!({"phase": "Failed", "containerStatuses": terminated("Error", 137)}));
        assert_eq!(
            observe(&j, Some(&killed)),
            Observation::Ended(Termination::DeadlineExceeded)
        );
        let running = pod(json!({"phase": "Running"}));
        assert_eq!(
            observe(&j, Some(&running)),
            Observation::Ended(Termination::DeadlineExceeded)
        );
        assert_eq!(
            observe(&j, None),
            Observation::Ended(Termination::DeadlineExceeded)
        );
    }

    #[test]
    fn eviction_comes_from_the_pods_reason_or_a_disruption_target_condition() {
        let j = failed_job();
        let evicted = pod(json!({"phase": "Failed", "reason": "Evicted",
            "message": "ephemeral-storage usage exceeds the limit"}));
        assert_eq!(
            observe(&j, Some(&evicted)),
            Observation::Ended(Termination::Evicted(
                "ephemeral-storage usage exceeds the limit".into()
            ))
        );
        let disrupted = pod(json!({"phase": "Failed",
            "containerStatuses": terminated("Error", 143),
            "conditions": [{"type": "DisruptionTarget", "status": "True",
                            "reason": "PreemptionByScheduler"}]}));
        assert_eq!(
            observe(&j, Some(&disrupted)),
            Observation::Ended(Termination::Evicted("PreemptionByScheduler".into()))
        );
        // Still running while being disrupted: not over yet.
        let going = pod(json!({"phase": "Running",
            "conditions": [{"type": "DisruptionTarget", "status": "True"}]}));
        assert_eq!(observe(&job(json!([])), Some(&going)), Observation::Running);
    }

    #[test]
    fn a_failed_fetch_step_is_a_launch_failure() {
        let p = pod(json!({"phase": "Failed", "initContainerStatuses": [{
            "name": "fetch", "image": "curl", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 22, "reason": "Error"}}}]}));
        let end = match observe(&failed_job(), Some(&p)) {
            Observation::Ended(end) => end,
            other => panic!("{other:?}"),
        };
        assert_eq!(end, Termination::FetchFailed("exit code 22".into()));
        assert_eq!(Ending::from(end).reason, Some(Reason::LaunchFailed));
    }

    #[test]
    fn a_failed_pod_waits_for_the_jobs_verdict() {
        let killed = pod(json!({"phase": "Failed", "containerStatuses": terminated("Error", 137)}));
        assert_eq!(
            observe(&job(json!([])), Some(&killed)),
            Observation::Failing(Termination::Exited(137))
        );
        let evicted = pod(json!({"phase": "Failed", "reason": "Evicted", "message": "disk"}));
        assert_eq!(
            observe(&job(json!([])), Some(&evicted)),
            Observation::Failing(Termination::Evicted("disk".into()))
        );
    }

    #[test]
    fn a_finished_job_whose_pod_is_gone_still_ends() {
        let complete = job(json!([{"type": "Complete", "status": "True"}]));
        assert_eq!(
            observe(&complete, None),
            Observation::Ended(Termination::Exited(0))
        );
        let failed =
            job(json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]));
        assert_eq!(
            observe(&failed, None),
            Observation::Ended(Termination::ExecutionFailed("BackoffLimitExceeded".into()))
        );
        assert!(job_finished(&failed) && job_finished(&complete));
        assert!(!job_finished(&job(json!([]))));
    }
}
