//! A stand-in for the Kubernetes API, served over plain HTTP on 127.0.0.1 and reached through a
//! kubeconfig, for testing the Kubernetes Job executor with the real kube client. It speaks
//! HTTP/1.1 and, with prior knowledge, HTTP/2 (the worker's log followers use it with
//! `kubernetes.log_streams_h2c`, as they use HTTP/2 over TLS with a real API server).
//!
//! It serves, for any namespace: `batch/v1` Jobs (create, get, list, watch, delete), core/v1
//! Pods (get, list, watch, delete, log), `networking.k8s.io/v1` NetworkPolicies (create, get,
//! list, watch, replace, merge patch, server-side apply simplified, delete), and
//! `GET /api/v1/namespaces/{ns}` and `/version`. Errors are `Status` objects, as kube-rs expects.
//!
//! Behind the API it simulates what a cluster does on its own: the job controller (a Job gets
//! one pod `{job}-{5 chars}` from its template; pod outcomes drive the Job's status and
//! conditions, `backoffLimit` and `podFailurePolicy`), admission (defaults, the service-account
//! token volume, optionally Pod Security "restricted"), the garbage collector (propagation
//! policies) and the TTL-after-finished controller (only when a test calls [`StandIn::run_ttl`]).
//! The kubelet's part is driven by the test: [`StandIn::set_pod_running`] and friends.
//!
//! Resource versions are one global counter; every change bumps it and is retained in a bounded
//! history that watches replay from. [`StandIn::expire_history`] drops it, ending every watch;
//! watching again from an old version gets the `ERROR` event with a 410 `Expired` Status that
//! makes kube's watcher re-list.

mod selector;
mod server;
mod state;
mod validate;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use state::{FaultAction, FaultEntry, Shared};

/// The namespace the kubeconfig's context selects.
pub const NAMESPACE: &str = "coderun-jobs";

/// A fault to inject: requests whose method matches (`"*"` or `""` for any) and whose
/// `path?query` contains `path_contains` are answered with `status` (as a `Status` JSON, without
/// being carried out) or delayed by `delay` (then carried out), `times` times.
#[derive(Debug, Clone)]
pub enum Fault {
    Status {
        method: &'static str,
        path_contains: String,
        status: u16,
        times: usize,
    },
    Delay {
        method: &'static str,
        path_contains: String,
        delay: Duration,
        times: usize,
    },
}

/// The stand-in API server. It runs until dropped.
pub struct StandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// Binds 127.0.0.1:0, serves in a background task, and writes the kubeconfig.
    pub async fn start() -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in API server");
        let addr = listener.local_addr().expect("local address");
        let shared = Shared::new();
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let dir = std::env::temp_dir().join(format!(
            "coderun-kube-stand-in-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create the kubeconfig directory");
        let kubeconfig = dir.join("kubeconfig");
        let yaml = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: stand-in
  cluster:
    server: http://{addr}
contexts:
- name: stand-in
  context:
    cluster: stand-in
    user: stand-in
    namespace: {NAMESPACE}
current-context: stand-in
preferences: {{}}
users:
- name: stand-in
  user:
    token: stand-in-token
"
        );
        std::fs::write(&kubeconfig, yaml).expect("write the kubeconfig");
        StandIn {
            shared,
            addr,
            dir,
            kubeconfig,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context points at [`Self::url`], namespace `coderun-jobs`,
    /// bearer-token auth (the stand-in accepts any non-empty token and answers 401 without one).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    // ------------------------------------------------------------ reading the store

    pub fn jobs(&self, ns: &str) -> Vec<Job> {
        self.shared.read(|st| {
            st.jobs
                .iter()
                .filter(|((n, _), _)| n == ns)
                .map(|(_, j)| j.clone())
                .collect()
        })
    }

    pub fn job(&self, ns: &str, name: &str) -> Option<Job> {
        self.shared
            .read(|st| st.jobs.get(&(ns.to_string(), name.to_string())).cloned())
    }

    pub fn pods(&self, ns: &str) -> Vec<Pod> {
        self.shared.read(|st| {
            st.pods
                .iter()
                .filter(|((n, _), _)| n == ns)
                .map(|(_, p)| p.clone())
                .collect()
        })
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<Pod> {
        self.shared
            .read(|st| st.pods.get(&(ns.to_string(), name.to_string())).cloned())
    }

    /// The job's newest pod (after a retry, the replacement).
    pub fn pod_of_job(&self, ns: &str, job: &str) -> Option<String> {
        self.pods_of_job(ns, job).pop()
    }

    /// All pods the job owns, oldest first.
    pub fn pods_of_job(&self, ns: &str, job: &str) -> Vec<String> {
        self.shared.read(|st| {
            st.pods_of(ns, job)
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()
        })
    }

    pub fn network_policies(&self, ns: &str) -> Vec<NetworkPolicy> {
        self.shared.read(|st| {
            st.objects(state::Kind::NetworkPolicy, Some(ns))
                .into_iter()
                .map(|v| serde_json::from_value(v).expect("stored network policy decodes"))
                .collect()
        })
    }

    /// The current (global) resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(|st| st.rv)
    }

    // ------------------------------------------------------------ the kubelet's part

    fn drive(&self, ns: &str, pod: &str, what: &str, f: impl FnOnce(&mut state::State)) {
        self.shared.write(|st| {
            assert!(
                st.pods.contains_key(&(ns.to_string(), pod.to_string())),
                "stand-in: {what}: no pod {ns}/{pod}"
            );
            f(st)
        });
    }

    /// Init containers terminated (exit 0, Completed), main containers running and ready,
    /// phase Running, pod IP; the Job's `ready` becomes 1.
    pub fn set_pod_running(&self, ns: &str, pod: &str) {
        self.drive(ns, pod, "set_pod_running", |st| st.set_pod_running(ns, pod));
    }

    /// Main containers terminated with exit code 0, reason Completed; phase Succeeded; the Job
    /// gets `succeeded`, `completionTime` and the conditions SuccessCriteriaMet, then Complete.
    pub fn set_pod_succeeded(&self, ns: &str, pod: &str) {
        self.drive(ns, pod, "set_pod_succeeded", |st| {
            st.set_pod_succeeded(ns, pod)
        });
    }

    /// Main containers terminated with `exit_code` / `reason` ("Error", or "OOMKilled" with
    /// 137); phase Failed. The job controller counts it against `backoffLimit` (or applies the
    /// Job's `podFailurePolicy`): past the limit the Job gets `failed` and the conditions
    /// FailureTarget, then Failed (reason BackoffLimitExceeded); otherwise a replacement pod.
    pub fn set_pod_failed(&self, ns: &str, pod: &str, exit_code: i32, reason: &str) {
        self.drive(ns, pod, "set_pod_failed", |st| {
            st.set_pod_failed(ns, pod, exit_code, reason)
        });
    }

    /// Main containers waiting with `reason` (ErrImagePull / ImagePullBackOff) and the
    /// runtime's message; the pod stays Pending.
    pub fn set_image_pull_failure(&self, ns: &str, pod: &str, reason: &str) {
        self.drive(ns, pod, "set_image_pull_failure", |st| {
            st.set_image_pull_failure(ns, pod, reason)
        });
    }

    /// Kubelet eviction: phase Failed, `status.reason` "Evicted" with a message, containers
    /// terminated with 137 / Error. Counted by the job controller as a failure.
    pub fn evict_pod(&self, ns: &str, pod: &str) {
        self.drive(ns, pod, "evict_pod", |st| st.evict_pod(ns, pod));
    }

    /// Disruption (preemption, drain, Eviction API): condition DisruptionTarget True (reason
    /// EvictionByEvictionAPI), phase Failed, containers terminated with 137 / Error.
    pub fn disrupt_pod(&self, ns: &str, pod: &str) {
        self.drive(ns, pod, "disrupt_pod", |st| st.disrupt_pod(ns, pod));
    }

    /// `activeDeadlineSeconds` ran out: the Job's active pods are killed and deleted, the Job
    /// gets `failed` and the conditions FailureTarget, then Failed, reason DeadlineExceeded.
    pub fn job_deadline_exceeded(&self, ns: &str, job: &str) {
        self.shared.write(|st| {
            assert!(
                st.jobs.contains_key(&(ns.to_string(), job.to_string())),
                "stand-in: job_deadline_exceeded: no job {ns}/{job}"
            );
            st.job_deadline_exceeded(ns, job);
        });
    }

    /// Appends to the log of the pod's main container (the first of `spec.containers`).
    pub fn append_log(&self, ns: &str, pod: &str, text: &str) {
        let container = self
            .shared
            .read(|st| st.main_container(ns, pod))
            .unwrap_or_else(|| panic!("stand-in: append_log: no pod {ns}/{pod}"));
        self.append_container_log(ns, pod, &container, text);
    }

    /// Appends to the log of one container of the pod (init containers included).
    pub fn append_container_log(&self, ns: &str, pod: &str, container: &str, text: &str) {
        self.drive(ns, pod, "append_container_log", |st| {
            st.logs
                .entry((ns.to_string(), pod.to_string(), container.to_string()))
                .or_default()
                .push_str(text);
        });
    }

    /// Edits a pod as the kubelet would and records a MODIFIED change (the job controller does
    /// not react). Returns false if there is no such pod.
    pub fn update_pod(&self, ns: &str, pod: &str, f: impl FnOnce(&mut Pod)) -> bool {
        self.shared.write(|st| st.update_pod(ns, pod, f))
    }

    /// Edits a Job and records a MODIFIED change. Returns false if there is no such Job.
    pub fn update_job(&self, ns: &str, job: &str, f: impl FnOnce(&mut Job)) -> bool {
        self.shared.write(|st| st.update_job(ns, job, f))
    }

    // ------------------------------------------------------------ the cluster's own controllers

    /// The TTL-after-finished controller, now: deletes (Foreground: the Job, then its pods and
    /// their logs) every finished Job whose `ttlSecondsAfterFinished` has elapsed since its
    /// Complete / Failed condition. These deletions are not API requests: not in [`Self::deletes`].
    pub fn run_ttl(&self) {
        self.run_ttl_after(Duration::ZERO);
    }

    /// [`Self::run_ttl`] as if `elapsed` more time had passed. Returns the deleted Jobs' names.
    pub fn run_ttl_after(&self, elapsed: Duration) -> Vec<String> {
        self.shared
            .write(|st| st.run_ttl(elapsed))
            .into_iter()
            .map(|(_, n)| n)
            .collect()
    }

    /// Drops the retained history (as etcd compaction does): every open watch stream ends, and a
    /// watch from any resource version handed out before gets an `ERROR` event with a 410
    /// `Expired` Status, then the stream closes. kube's watcher then re-lists.
    pub fn expire_history(&self) {
        self.shared.write(|st| st.expire_history());
    }

    /// Ends every open watch stream without expiring history (a dropped connection): watchers
    /// resume from their last resource version and miss nothing.
    pub fn end_watches(&self) {
        self.shared.write(|st| st.epoch += 1);
    }

    /// Bounds the retained history to `n` changes (default 10 000); older versions get 410.
    pub fn set_history_limit(&self, n: usize) {
        self.shared.write(|st| {
            st.history_cap = n.max(1);
            while st.history.len() > st.history_cap {
                if let Some(old) = st.history.pop_front() {
                    st.history_start = old.rv;
                }
            }
        });
    }

    /// Turns on Pod Security admission at `restricted` for the namespace: the job controller's
    /// pod creation is refused for pods that violate the profile (the Job stays without pods, as
    /// on a cluster; see [`Self::pod_create_failures`]), and Job creates get a `Warning` header.
    pub fn enforce_pod_security_restricted(&self, ns: &str) {
        self.shared.write(|st| st.restricted.insert(ns.to_string()));
    }

    /// (namespace, job, message) for each pod the job controller could not create.
    pub fn pod_create_failures(&self) -> Vec<(String, String, String)> {
        self.shared.read(|st| st.pod_create_failures.clone())
    }

    // ------------------------------------------------------------ faults and records

    pub fn inject(&self, fault: Fault) {
        let entry = match fault {
            Fault::Status {
                method,
                path_contains,
                status,
                times,
            } => FaultEntry {
                method: method.to_string(),
                path_contains,
                action: FaultAction::Status(status),
                times,
            },
            Fault::Delay {
                method,
                path_contains,
                delay,
                times,
            } => FaultEntry {
                method: method.to_string(),
                path_contains,
                action: FaultAction::Delay(delay),
                times,
            },
        };
        self.shared.write(|st| st.faults.push(entry));
    }

    /// Like `Fault::Status`, but the request is carried out first: the response is lost (the
    /// Job exists, the client sees `status`), as when a connection drops after the commit.
    pub fn inject_after_commit(
        &self,
        method: &'static str,
        path_contains: &str,
        status: u16,
        times: usize,
    ) {
        let entry = FaultEntry {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            action: FaultAction::AfterCommit(status),
            times,
        };
        self.shared.write(|st| st.faults.push(entry));
    }

    /// POSTs to a `jobs` collection received, including refused ones (faults, 401, 409, 422).
    pub fn job_creates(&self) -> usize {
        self.shared.read(|st| st.job_creates)
    }

    /// Every DELETE request that reached a Job, Pod or NetworkPolicy (found or not):
    /// (kind — "Job" / "Pod" / "NetworkPolicy", name, propagationPolicy from the body or query).
    pub fn deletes(&self) -> Vec<(String, String, Option<String>)> {
        self.shared.read(|st| st.deletes.clone())
    }

    /// The HTTP version of every log request that followed (`follow=true`), in order.
    pub fn follow_versions(&self) -> Vec<http::Version> {
        self.shared.read(|st| st.follow_versions.clone())
    }

    /// Every request received, as `METHOD path?query`, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.read(|st| st.requests.clone())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.abort();
        // End open watches; log followers end when their pod is gone.
        self.shared.write(|st| {
            st.epoch += 1;
            st.pods.clear();
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
