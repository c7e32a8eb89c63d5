//! The stand-in's store: objects, the global resource version and its event history, pod logs,
//! and the simulated job controller, kubelet and garbage collector.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, ObjectFieldSelector,
};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, KeyToPath, Pod, PodCondition, PodIP, PodStatus, ProjectedVolumeSource,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use serde_json::Value;

/// The API resources the stand-in serves.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub(crate) enum Kind {
    Job,
    Pod,
    NetworkPolicy,
}

impl Kind {
    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Kind::Job => "batch/v1",
            Kind::Pod => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Kind::Job => "Job",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::Job => "jobs",
            Kind::Pod => "pods",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }
    pub(crate) fn group(self) -> &'static str {
        match self {
            Kind::Job => "batch",
            Kind::Pod => "",
            Kind::NetworkPolicy => "networking.k8s.io",
        }
    }
    /// `jobs.batch`, `pods`: how the API server names the resource in messages.
    pub(crate) fn qualified(self) -> String {
        if self.group().is_empty() {
            self.resource().to_string()
        } else {
            format!("{}.{}", self.resource(), self.group())
        }
    }
    /// `Job.batch`, `Pod`: how the API server names the kind in validation messages.
    pub(crate) fn qualified_kind(self) -> String {
        if self.group().is_empty() {
            self.kind().to_string()
        } else {
            format!("{}.{}", self.kind(), self.group())
        }
    }
    /// Field selectors the resource supports beyond `metadata.name` / `metadata.namespace`.
    pub(crate) fn selectable_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Job => &["status.successful"],
            Kind::Pod => &[
                "status.phase",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "status.podIP",
            ],
            Kind::NetworkPolicy => &[],
        }
    }
}

/// One change, as a watch delivers it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) kind: Kind,
    pub(crate) ns: String,
    pub(crate) object: Value,
    /// The watch event's line, rendered once when the change happened (as an API server's
    /// watch cache does): every watcher sends the same bytes, and none serializes under the
    /// store's lock.
    pub(crate) line: Arc<str>,
}

#[derive(Debug, Clone)]
pub(crate) enum FaultAction {
    Status(u16),
    Delay(Duration),
    /// The request is carried out, then answered with this status (a lost response).
    AfterCommit(u16),
}

#[derive(Debug, Clone)]
pub(crate) struct FaultEntry {
    pub(crate) method: String,
    pub(crate) path_contains: String,
    pub(crate) action: FaultAction,
    pub(crate) times: usize,
}

pub(crate) type Key = (String, String);

pub(crate) struct State {
    pub(crate) rv: u64,
    pub(crate) history: VecDeque<Change>,
    /// Changes with a resource version above this are retained; a watch from below gets 410.
    pub(crate) history_start: u64,
    pub(crate) history_cap: usize,
    /// Bumped to end every open watch stream.
    pub(crate) epoch: u64,
    pub(crate) jobs: BTreeMap<Key, Job>,
    pub(crate) pods: BTreeMap<Key, Pod>,
    pub(crate) others: BTreeMap<(Kind, String, String), Value>,
    /// (namespace, pod, container) → log text.
    pub(crate) logs: HashMap<(String, String, String), String>,
    pub(crate) faults: Vec<FaultEntry>,
    pub(crate) job_creates: usize,
    pub(crate) deletes: Vec<(String, String, Option<String>)>,
    pub(crate) requests: Vec<String>,
    /// The HTTP version of every log request that follows (`follow=true`), in order.
    pub(crate) follow_versions: Vec<http::Version>,
    pub(crate) restricted: BTreeSet<String>,
    pub(crate) pod_create_failures: Vec<(String, String, String)>,
    pub(crate) pod_counter: u64,
}

/// The state and the tick every waiter (watch streams, log followers) sleeps on.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) tick: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                rv: 1000,
                history: VecDeque::new(),
                history_start: 1000,
                history_cap: 10_000,
                epoch: 0,
                jobs: BTreeMap::new(),
                pods: BTreeMap::new(),
                others: BTreeMap::new(),
                logs: HashMap::new(),
                faults: Vec::new(),
                job_creates: 0,
                deletes: Vec::new(),
                requests: Vec::new(),
                follow_versions: Vec::new(),
                restricted: BTreeSet::new(),
                pod_create_failures: Vec::new(),
                pod_counter: 0,
            }),
            tick: tokio::sync::watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock())
    }

    /// Runs `f` on the state, then wakes every watcher and log follower.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.lock());
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
        r
    }
}

pub(crate) fn now() -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(chrono::Utc::now().timestamp())
            .expect("time in range"),
    )
}

fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    (0..n)
        .map(|i| ALPHABET[bytes[i] as usize % ALPHABET.len()] as char)
        .collect()
}

fn container_id() -> String {
    format!(
        "containerd://{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub(crate) fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub(crate) fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

fn finish_time(job: &Job) -> Option<i64> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find_map(|c| {
            ((c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                .then(|| c.last_transition_time.as_ref().map(|t| t.0.as_second()))
                .flatten()
        })
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    JobCondition {
        type_: type_.to_string(),
        status: "True".to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_probe_time: Some(now()),
        last_transition_time: Some(now()),
    }
}

fn pod_condition(type_: &str, status: bool, reason: Option<&str>) -> PodCondition {
    PodCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(now()),
        ..Default::default()
    }
}

fn set_pod_condition(status: &mut PodStatus, cond: PodCondition) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == cond.type_) {
        if c.status != cond.status {
            c.last_transition_time = cond.last_transition_time.clone();
        }
        c.status = cond.status;
        c.reason = cond.reason;
        c.message = cond.message;
    } else {
        conds.push(cond);
    }
}

fn waiting(name: &str, image: &str, reason: &str, message: Option<String>) -> ContainerStatus {
    ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_string()),
                message,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn started_at(cs: &ContainerStatus) -> Option<Time> {
    let st = cs.state.as_ref()?;
    st.running
        .as_ref()
        .and_then(|r| r.started_at.clone())
        .or_else(|| st.terminated.as_ref().and_then(|t| t.started_at.clone()))
}

fn terminate(cs: &mut ContainerStatus, exit_code: i32, reason: &str, message: Option<String>) {
    let started = started_at(cs).or_else(|| Some(now()));
    cs.container_id.get_or_insert_with(container_id);
    if cs.image_id.is_empty() {
        cs.image_id = format!(
            "docker.io/library/{}@sha256:{}",
            cs.image,
            uuid::Uuid::new_v4().simple()
        );
    }
    cs.ready = false;
    cs.started = Some(false);
    cs.state = Some(ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code,
            reason: Some(reason.to_string()),
            message,
            started_at: started,
            finished_at: Some(now()),
            container_id: cs.container_id.clone(),
            signal: None,
        }),
        ..Default::default()
    });
}

fn is_terminated(cs: &ContainerStatus) -> bool {
    cs.state.as_ref().is_some_and(|s| s.terminated.is_some())
}

fn job_labels(job_name: &str, uid: &str) -> [(String, String); 4] {
    [
        ("batch.kubernetes.io/controller-uid".into(), uid.into()),
        ("batch.kubernetes.io/job-name".into(), job_name.into()),
        ("controller-uid".into(), uid.into()),
        ("job-name".into(), job_name.into()),
    ]
}

fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else {
        match last.split_once(':') {
            Some((_, "latest")) | None => "Always",
            Some(_) => "IfNotPresent",
        }
    }
}

/// The pod's QoS class from its containers' requests and limits.
fn qos_class(spec: &k8s_openapi::api::core::v1::PodSpec) -> &'static str {
    let all: Vec<&k8s_openapi::api::core::v1::Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let res = c.resources.clone().unwrap_or_default();
        let limits = res.limits.unwrap_or_default();
        let requests = res.requests.unwrap_or_default();
        let relevant = |m: &BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >| { m.keys().any(|k| k == "cpu" || k == "memory") };
        any |= relevant(&limits) || relevant(&requests);
        for r in ["cpu", "memory"] {
            let Some(limit) = limits.get(r) else {
                guaranteed = false;
                continue;
            };
            let request = requests.get(r).unwrap_or(limit);
            let parse = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
                super::validate::parse_quantity(&q.0)
            };
            if parse(request) != parse(limit) {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// What the job controller does when one of its pods ends.
enum Verdict {
    Count,
    Ignore,
    FailJob(String),
}

fn pod_failure_verdict(job: &Job, pod: &Pod) -> Verdict {
    let Some(pfp) = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
    else {
        return Verdict::Count;
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for (i, rule) in pfp.rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(codes) = &rule.on_exit_codes {
            for cs in &statuses {
                if codes.container_name.as_ref().is_some_and(|n| *n != cs.name) {
                    continue;
                }
                let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
                    continue;
                };
                if t.exit_code == 0 {
                    continue;
                }
                let inside = codes.values.contains(&t.exit_code);
                if (codes.operator == "In") == inside {
                    matched = Some(format!(
                        "Container {} for pod {ns}/{pod_name} failed with exit code {} matching {} rule at index {i}",
                        cs.name, t.exit_code, rule.action
                    ));
                    break;
                }
            }
        }
        for pattern in rule.on_pod_conditions.iter().flatten() {
            let want = pattern.status.clone().unwrap_or_else(|| "True".into());
            if conditions
                .iter()
                .any(|c| c.type_ == pattern.type_ && c.status == want)
            {
                matched = Some(format!(
                    "Pod {ns}/{pod_name} has condition {} matching {} rule at index {i}",
                    pattern.type_, rule.action
                ));
                break;
            }
        }
        if let Some(message) = matched {
            return match rule.action.as_str() {
                "FailJob" => Verdict::FailJob(message),
                "Ignore" => Verdict::Ignore,
                _ => Verdict::Count,
            };
        }
    }
    Verdict::Count
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn push(&mut self, kind: Kind, ns: &str, typ: &'static str, object: Value) {
        let rv = self.rv;
        let line = crate::kube::server::event_line(typ, &object).into();
        self.history.push_back(Change {
            rv,
            kind,
            ns: ns.to_string(),
            object,
            line,
        });
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.history_start = old.rv;
            }
        }
    }

    pub(crate) fn put_job(&mut self, mut job: Job, typ: &'static str) -> Job {
        let rv = self.bump();
        job.metadata.resource_version = Some(rv.to_string());
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        self.push(
            Kind::Job,
            &ns,
            typ,
            serde_json::to_value(&job).expect("job serializes"),
        );
        self.jobs.insert((ns, name), job.clone());
        job
    }

    pub(crate) fn put_pod(&mut self, mut pod: Pod, typ: &'static str) -> Pod {
        let rv = self.bump();
        pod.metadata.resource_version = Some(rv.to_string());
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.push(
            Kind::Pod,
            &ns,
            typ,
            serde_json::to_value(&pod).expect("pod serializes"),
        );
        self.pods.insert((ns, name), pod.clone());
        pod
    }

    pub(crate) fn put_other(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        mut obj: Value,
        typ: &'static str,
    ) -> Value {
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.push(kind, ns, typ, obj.clone());
        self.others
            .insert((kind, ns.to_string(), name.to_string()), obj.clone());
        obj
    }

    pub(crate) fn remove_other(&mut self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .others
            .remove(&(kind, ns.to_string(), name.to_string()))?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.push(kind, ns, "DELETED", obj.clone());
        Some(obj)
    }

    fn remove_job(&mut self, ns: &str, name: &str) -> Option<Job> {
        let mut job = self.jobs.remove(&(ns.to_string(), name.to_string()))?;
        let rv = self.bump();
        job.metadata.resource_version = Some(rv.to_string());
        self.push(
            Kind::Job,
            ns,
            "DELETED",
            serde_json::to_value(&job).expect("job serializes"),
        );
        Some(job)
    }

    /// Every object of `kind` in `ns` (all namespaces when `None`), as JSON, in key order.
    pub(crate) fn objects(&self, kind: Kind, ns: Option<&str>) -> Vec<Value> {
        let in_ns = |n: &str| ns.is_none_or(|x| x == n);
        match kind {
            Kind::Job => self
                .jobs
                .iter()
                .filter(|((n, _), _)| in_ns(n))
                .map(|(_, j)| serde_json::to_value(j).expect("json"))
                .collect(),
            Kind::Pod => self
                .pods
                .iter()
                .filter(|((n, _), _)| in_ns(n))
                .map(|(_, p)| serde_json::to_value(p).expect("json"))
                .collect(),
            other => self
                .others
                .iter()
                .filter(|((k, n, _), _)| *k == other && in_ns(n))
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }

    pub(crate) fn object(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let key = (ns.to_string(), name.to_string());
        match kind {
            Kind::Job => self
                .jobs
                .get(&key)
                .map(|j| serde_json::to_value(j).expect("json")),
            Kind::Pod => self
                .pods
                .get(&key)
                .map(|p| serde_json::to_value(p).expect("json")),
            other => self.others.get(&(other, key.0, key.1)).cloned(),
        }
    }

    /// Takes the first matching fault, counting it down.
    pub(crate) fn take_fault(&mut self, method: &str, target: &str) -> Option<FaultAction> {
        let idx = self.faults.iter().position(|f| {
            f.times > 0
                && (f.method.is_empty() || f.method == "*" || f.method.eq_ignore_ascii_case(method))
                && target.contains(&f.path_contains)
        })?;
        let f = &mut self.faults[idx];
        f.times -= 1;
        let action = f.action.clone();
        if f.times == 0 {
            self.faults.remove(idx);
        }
        Some(action)
    }

    // ---------------------------------------------------------------- the job controller

    /// Stores a validated Job with the API server's defaults and starts it: the job controller
    /// creates its pod and records `startTime` / `active`.
    pub(crate) fn create_job(&mut self, mut job: Job, ns: &str, dry_run: bool) -> Job {
        let uid = uuid::Uuid::new_v4().to_string();
        let meta = &mut job.metadata;
        if meta.name.as_deref().unwrap_or_default().is_empty() {
            let base = meta.generate_name.clone().unwrap_or_default();
            loop {
                let name = format!("{base}{}", random_suffix(5));
                if !self.jobs.contains_key(&(ns.to_string(), name.clone())) {
                    meta.name = Some(name);
                    break;
                }
            }
        }
        let name = meta.name.clone().unwrap_or_default();
        meta.namespace = Some(ns.to_string());
        meta.uid = Some(uid.clone());
        meta.creation_timestamp = Some(now());
        meta.generation = Some(1);
        meta.deletion_timestamp = None;
        meta.managed_fields = None;
        job.status = None;

        let spec = job.spec.get_or_insert_with(Default::default);
        spec.backoff_limit.get_or_insert(6);
        spec.completions.get_or_insert(1);
        spec.parallelism.get_or_insert(1);
        spec.completion_mode
            .get_or_insert_with(|| "NonIndexed".into());
        spec.suspend.get_or_insert(false);
        spec.pod_replacement_policy
            .get_or_insert_with(|| "TerminatingOrFailed".into());
        spec.selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "batch.kubernetes.io/controller-uid".to_string(),
                uid.clone(),
            )])),
            match_expressions: None,
        });
        let tmeta = spec.template.metadata.get_or_insert_with(Default::default);
        tmeta
            .labels
            .get_or_insert_with(BTreeMap::new)
            .extend(job_labels(&name, &uid));
        let pspec = spec.template.spec.get_or_insert_with(Default::default);
        pspec
            .dns_policy
            .get_or_insert_with(|| "ClusterFirst".into());
        pspec
            .scheduler_name
            .get_or_insert_with(|| "default-scheduler".into());
        pspec.termination_grace_period_seconds.get_or_insert(30);
        pspec.security_context.get_or_insert_with(Default::default);
        pspec.enable_service_links.get_or_insert(true);
        for c in pspec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(pspec.containers.iter_mut())
        {
            c.termination_message_path
                .get_or_insert_with(|| "/dev/termination-log".into());
            c.termination_message_policy
                .get_or_insert_with(|| "File".into());
            let policy = default_pull_policy(c.image.as_deref().unwrap_or_default());
            c.image_pull_policy.get_or_insert_with(|| policy.into());
            c.resources.get_or_insert_with(Default::default);
        }
        if dry_run {
            return job;
        }
        let job = self.put_job(job, "ADDED");
        if job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
            return job;
        }
        self.spawn_pod(ns, &name);
        self.update_job_status(ns, &name, |st| {
            st.start_time = Some(now());
        });
        self.jobs
            .get(&(ns.to_string(), name))
            .cloned()
            .unwrap_or(job)
    }

    /// The job controller creates one pod from the template (`{job}-{5 chars}`), or records why
    /// admission refused it.
    fn spawn_pod(&mut self, ns: &str, job_name: &str) -> Option<String> {
        let job = self
            .jobs
            .get(&(ns.to_string(), job_name.to_string()))?
            .clone();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let template = job.spec.as_ref()?.template.clone();
        let mut base = format!("{job_name}-");
        base.truncate(58);
        let pod_name = loop {
            let name = format!("{base}{}", random_suffix(5));
            if !self.pods.contains_key(&(ns.to_string(), name.clone())) {
                break name;
            }
        };
        let mut spec = template.spec.unwrap_or_default();
        let tmeta = template.metadata.unwrap_or_default();

        if self.restricted.contains(ns) {
            let violations = super::validate::restricted_violations(&spec);
            if !violations.is_empty() {
                let message = format!(
                    "pods \"{pod_name}\" is forbidden: violates PodSecurity \"restricted:latest\": {}",
                    violations.join(", ")
                );
                self.pod_create_failures
                    .push((ns.to_string(), job_name.to_string(), message));
                return None;
            }
        }

        // ServiceAccount admission.
        spec.service_account_name
            .get_or_insert_with(|| "default".into());
        spec.service_account = spec.service_account_name.clone();
        if spec.automount_service_account_token != Some(false) {
            let vol = format!("kube-api-access-{}", random_suffix(5));
            spec.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: vol.clone(),
                projected: Some(ProjectedVolumeSource {
                    default_mode: Some(420),
                    sources: Some(vec![
                        VolumeProjection {
                            service_account_token: Some(ServiceAccountTokenProjection {
                                expiration_seconds: Some(3607),
                                path: "token".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        VolumeProjection {
                            config_map: Some(ConfigMapProjection {
                                name: "kube-root-ca.crt".into(),
                                items: Some(vec![KeyToPath {
                                    key: "ca.crt".into(),
                                    path: "ca.crt".into(),
                                    ..Default::default()
                                }]),
                                optional: None,
                            }),
                            ..Default::default()
                        },
                        VolumeProjection {
                            downward_api: Some(DownwardAPIProjection {
                                items: Some(vec![DownwardAPIVolumeFile {
                                    path: "namespace".into(),
                                    field_ref: Some(ObjectFieldSelector {
                                        api_version: Some("v1".into()),
                                        field_path: "metadata.namespace".into(),
                                    }),
                                    ..Default::default()
                                }]),
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            });
            for c in spec
                .init_containers
                .iter_mut()
                .flatten()
                .chain(spec.containers.iter_mut())
            {
                c.volume_mounts
                    .get_or_insert_with(Vec::new)
                    .push(VolumeMount {
                        name: vol.clone(),
                        mount_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                        read_only: Some(true),
                        ..Default::default()
                    });
            }
        }
        spec.node_name = Some("stand-in-node".into());

        let mut labels = tmeta.labels.clone().unwrap_or_default();
        labels.extend(job_labels(job_name, &uid));
        let image_of =
            |c: &k8s_openapi::api::core::v1::Container| c.image.clone().unwrap_or_default();
        let inits: Vec<ContainerStatus> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| waiting(&c.name, &image_of(c), "ContainerCreating", None))
            .collect();
        let mains: Vec<ContainerStatus> = spec
            .containers
            .iter()
            .map(|c| waiting(&c.name, &image_of(c), "ContainerCreating", None))
            .collect();
        let has_inits = !inits.is_empty();
        let mut status = PodStatus {
            phase: Some("Pending".into()),
            host_ip: Some("10.0.0.10".into()),
            start_time: Some(now()),
            qos_class: Some(qos_class(&spec).into()),
            init_container_statuses: has_inits.then_some(inits),
            container_statuses: Some(mains),
            ..Default::default()
        };
        set_pod_condition(
            &mut status,
            pod_condition("PodReadyToStartContainers", false, None),
        );
        set_pod_condition(
            &mut status,
            pod_condition(
                "Initialized",
                !has_inits,
                has_inits.then_some("ContainersNotInitialized"),
            ),
        );
        set_pod_condition(
            &mut status,
            pod_condition("Ready", false, Some("ContainersNotReady")),
        );
        set_pod_condition(
            &mut status,
            pod_condition("ContainersReady", false, Some("ContainersNotReady")),
        );
        set_pod_condition(&mut status, pod_condition("PodScheduled", true, None));
        let pod = Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(pod_name.clone()),
                generate_name: Some(base),
                namespace: Some(ns.to_string()),
                uid: Some(uuid::Uuid::new_v4().to_string()),
                creation_timestamp: Some(now()),
                generation: Some(1),
                labels: Some(labels),
                annotations: tmeta.annotations.clone(),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: job_name.to_string(),
                    uid,
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            spec: Some(spec),
            status: Some(status),
        };
        self.put_pod(pod, "ADDED");
        Some(pod_name)
    }

    /// The job a pod belongs to (by controller owner reference and uid), if it still exists.
    fn owner_job(&self, pod: &Pod) -> Option<String> {
        let ns = pod.metadata.namespace.clone()?;
        let owner = pod
            .metadata
            .owner_references
            .as_ref()?
            .iter()
            .find(|o| o.kind == "Job" && o.controller == Some(true))?;
        let job = self.jobs.get(&(ns, owner.name.clone()))?;
        (job.metadata.uid.as_deref() == Some(owner.uid.as_str())).then(|| owner.name.clone())
    }

    /// The pods a job owns, oldest first.
    pub(crate) fn pods_of(&self, ns: &str, job_name: &str) -> Vec<Pod> {
        let Some(uid) = self
            .jobs
            .get(&(ns.to_string(), job_name.to_string()))
            .and_then(|j| j.metadata.uid.clone())
        else {
            return Vec::new();
        };
        let mut pods: Vec<Pod> = self
            .pods
            .iter()
            .filter(|((n, _), p)| {
                n == ns
                    && p.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.kind == "Job" && o.uid == uid)
            })
            .map(|(_, p)| p.clone())
            .collect();
        pods.sort_by_key(|p| {
            (
                p.metadata.creation_timestamp.clone(),
                p.metadata
                    .resource_version
                    .as_ref()
                    .and_then(|r| r.parse::<u64>().ok()),
            )
        });
        pods
    }

    /// Applies `f` to the job's status, recounts `active` / `ready` / `terminating` from its pods
    /// and records the change.
    fn update_job_status(&mut self, ns: &str, name: &str, f: impl FnOnce(&mut JobStatus)) {
        let Some(mut job) = self.jobs.get(&(ns.to_string(), name.to_string())).cloned() else {
            return;
        };
        let pods = self.pods_of(ns, name);
        let status = job.status.get_or_insert_with(Default::default);
        f(status);
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_none())
            .collect();
        status.active = Some(live.len() as i32);
        status.ready = Some(
            live.iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .count() as i32,
        );
        status.terminating = Some(0);
        status
            .uncounted_terminated_pods
            .get_or_insert_with(Default::default);
        self.put_job(job, "MODIFIED");
    }

    fn fail_job(&mut self, ns: &str, name: &str, reason: &str, message: &str) {
        self.update_job_status(ns, name, |st| {
            st.conditions.get_or_insert_with(Vec::new).push(condition(
                "FailureTarget",
                reason,
                message,
            ));
        });
        self.update_job_status(ns, name, |st| {
            st.conditions
                .get_or_insert_with(Vec::new)
                .push(condition("Failed", reason, message));
        });
    }

    /// The job controller's reaction to a pod of `pod`'s job reaching Succeeded or Failed (or
    /// being deleted before it did).
    fn pod_finished(&mut self, pod: &Pod) {
        let Some(job_name) = self.owner_job(pod) else {
            return;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let Some(job) = self.jobs.get(&(ns.clone(), job_name.clone())).cloned() else {
            return;
        };
        if job_finished(&job) {
            self.update_job_status(&ns, &job_name, |_| {});
            return;
        }
        let spec = job.spec.clone().unwrap_or_default();
        let succeeded = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
        if succeeded {
            let done = job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) + 1;
            if done >= spec.completions.unwrap_or(1) {
                let msg = "Reached expected number of succeeded pods";
                self.update_job_status(&ns, &job_name, |st| {
                    st.succeeded = Some(done);
                    st.conditions.get_or_insert_with(Vec::new).push(condition(
                        "SuccessCriteriaMet",
                        "CompletionsReached",
                        msg,
                    ));
                });
                self.update_job_status(&ns, &job_name, |st| {
                    st.completion_time = Some(now());
                    st.conditions.get_or_insert_with(Vec::new).push(condition(
                        "Complete",
                        "CompletionsReached",
                        msg,
                    ));
                });
            } else {
                self.spawn_pod(&ns, &job_name);
                self.update_job_status(&ns, &job_name, |st| st.succeeded = Some(done));
            }
            return;
        }
        match pod_failure_verdict(&job, pod) {
            Verdict::FailJob(message) => {
                let failed = job.status.as_ref().and_then(|s| s.failed).unwrap_or(0) + 1;
                self.update_job_status(&ns, &job_name, |st| st.failed = Some(failed));
                self.fail_job(&ns, &job_name, "PodFailurePolicy", &message);
            }
            Verdict::Ignore => {
                self.spawn_pod(&ns, &job_name);
                self.update_job_status(&ns, &job_name, |_| {});
            }
            Verdict::Count => {
                let failed = job.status.as_ref().and_then(|s| s.failed).unwrap_or(0) + 1;
                if failed > spec.backoff_limit.unwrap_or(6) {
                    self.update_job_status(&ns, &job_name, |st| st.failed = Some(failed));
                    self.fail_job(
                        &ns,
                        &job_name,
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    );
                } else {
                    self.spawn_pod(&ns, &job_name);
                    self.update_job_status(&ns, &job_name, |st| st.failed = Some(failed));
                }
            }
        }
    }

    // ---------------------------------------------------------------- the kubelet, as tests drive it

    fn edit_pod(&mut self, ns: &str, name: &str, f: impl FnOnce(&mut Pod)) -> Option<Pod> {
        let mut pod = self.pods.get(&(ns.to_string(), name.to_string()))?.clone();
        f(&mut pod);
        Some(self.put_pod(pod, "MODIFIED"))
    }

    pub(crate) fn update_pod(&mut self, ns: &str, name: &str, f: impl FnOnce(&mut Pod)) -> bool {
        self.edit_pod(ns, name, f).is_some()
    }

    pub(crate) fn update_job(&mut self, ns: &str, name: &str, f: impl FnOnce(&mut Job)) -> bool {
        let Some(mut job) = self.jobs.get(&(ns.to_string(), name.to_string())).cloned() else {
            return false;
        };
        f(&mut job);
        self.put_job(job, "MODIFIED");
        true
    }

    fn sync_owner(&mut self, pod: &Pod) {
        if let Some(job) = self.owner_job(pod) {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            self.update_job_status(&ns, &job, |_| {});
        }
    }

    fn complete_inits(status: &mut PodStatus) {
        for cs in status.init_container_statuses.iter_mut().flatten() {
            if !is_terminated(cs) {
                terminate(cs, 0, "Completed", None);
            }
        }
        set_pod_condition(status, pod_condition("Initialized", true, None));
        set_pod_condition(
            status,
            pod_condition("PodReadyToStartContainers", true, None),
        );
    }

    pub(crate) fn set_pod_running(&mut self, ns: &str, name: &str) {
        self.pod_counter += 1;
        let ip = format!(
            "10.244.{}.{}",
            (self.pod_counter / 250) % 250,
            self.pod_counter % 250 + 2
        );
        let Some(pod) = self.edit_pod(ns, name, |pod| {
            let status = pod.status.get_or_insert_with(Default::default);
            Self::complete_inits(status);
            for cs in status.container_statuses.iter_mut().flatten() {
                cs.container_id = Some(container_id());
                cs.image_id = format!(
                    "docker.io/library/{}@sha256:{}",
                    cs.image,
                    uuid::Uuid::new_v4().simple()
                );
                cs.ready = true;
                cs.started = Some(true);
                cs.state = Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(now()),
                    }),
                    ..Default::default()
                });
            }
            status.phase = Some("Running".into());
            status.pod_ip = Some(ip.clone());
            status.pod_ips = Some(vec![PodIP { ip: ip.clone() }]);
            status.start_time.get_or_insert_with(now);
            set_pod_condition(status, pod_condition("Ready", true, None));
            set_pod_condition(status, pod_condition("ContainersReady", true, None));
        }) else {
            return;
        };
        self.sync_owner(&pod);
    }

    /// Ends the pod: main containers terminate with `exit_code` / `reason` (init containers, if
    /// still pending, complete), the phase becomes `phase`, and the job controller reacts.
    fn end_pod(
        &mut self,
        ns: &str,
        name: &str,
        phase: &str,
        exit_code: i32,
        reason: &str,
        extra: impl FnOnce(&mut PodStatus),
    ) {
        let Some(was_terminal) = self
            .pods
            .get(&(ns.to_string(), name.to_string()))
            .map(is_terminal)
        else {
            return;
        };
        let Some(pod) = self.edit_pod(ns, name, |pod| {
            let status = pod.status.get_or_insert_with(Default::default);
            Self::complete_inits(status);
            for cs in status.container_statuses.iter_mut().flatten() {
                terminate(cs, exit_code, reason, None);
            }
            status.phase = Some(phase.into());
            let why = if phase == "Succeeded" {
                "PodCompleted"
            } else {
                "PodFailed"
            };
            set_pod_condition(status, pod_condition("Ready", false, Some(why)));
            set_pod_condition(status, pod_condition("ContainersReady", false, Some(why)));
            set_pod_condition(
                status,
                pod_condition("PodReadyToStartContainers", false, None),
            );
            extra(status);
        }) else {
            return;
        };
        if was_terminal {
            // Already counted by the job controller.
            self.sync_owner(&pod);
        } else {
            self.pod_finished(&pod);
        }
    }

    pub(crate) fn set_pod_succeeded(&mut self, ns: &str, name: &str) {
        self.end_pod(ns, name, "Succeeded", 0, "Completed", |_| {});
    }

    pub(crate) fn set_pod_failed(&mut self, ns: &str, name: &str, exit_code: i32, reason: &str) {
        self.end_pod(ns, name, "Failed", exit_code, reason, |_| {});
    }

    pub(crate) fn evict_pod(&mut self, ns: &str, name: &str) {
        self.end_pod(ns, name, "Failed", 137, "Error", |st| {
            st.reason = Some("Evicted".into());
            st.message = Some(
                "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi. "
                    .into(),
            );
        });
    }

    pub(crate) fn disrupt_pod(&mut self, ns: &str, name: &str) {
        self.end_pod(ns, name, "Failed", 137, "Error", |st| {
            set_pod_condition(
                st,
                PodCondition {
                    message: Some("Eviction API: evicting".into()),
                    ..pod_condition("DisruptionTarget", true, Some("EvictionByEvictionAPI"))
                },
            );
        });
    }

    pub(crate) fn set_image_pull_failure(&mut self, ns: &str, name: &str, reason: &str) {
        let Some(pod) = self.edit_pod(ns, name, |pod| {
            let status = pod.status.get_or_insert_with(Default::default);
            Self::complete_inits(status);
            for cs in status.container_statuses.iter_mut().flatten() {
                let message = if reason == "ImagePullBackOff" {
                    format!("Back-off pulling image \"{}\"", cs.image)
                } else {
                    format!(
                        "rpc error: code = NotFound desc = failed to pull and unpack image \"{}\": not found",
                        cs.image
                    )
                };
                *cs = waiting(&cs.name.clone(), &cs.image.clone(), reason, Some(message));
            }
            status.phase = Some("Pending".into());
        }) else {
            return;
        };
        self.sync_owner(&pod);
    }

    /// Deletes a pod as the API server and kubelet do, in one go: a MODIFIED with the deletion
    /// timestamp (containers killed), then DELETED. With `account`, the job controller counts a
    /// pod that had not finished as failed.
    pub(crate) fn delete_pod(&mut self, ns: &str, name: &str, account: bool) -> Option<Pod> {
        let was_terminal = is_terminal(self.pods.get(&(ns.to_string(), name.to_string()))?);
        let pod = self.edit_pod(ns, name, |pod| {
            let grace = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            pod.metadata.deletion_timestamp = Some(now());
            pod.metadata.deletion_grace_period_seconds = Some(grace);
            if !is_terminal(pod) {
                let status = pod.status.get_or_insert_with(Default::default);
                for cs in status
                    .init_container_statuses
                    .iter_mut()
                    .flatten()
                    .chain(status.container_statuses.iter_mut().flatten())
                {
                    if !is_terminated(cs) {
                        terminate(cs, 137, "Error", None);
                    }
                }
                status.phase = Some("Failed".into());
                set_pod_condition(status, pod_condition("Ready", false, Some("PodFailed")));
                set_pod_condition(
                    status,
                    pod_condition("ContainersReady", false, Some("PodFailed")),
                );
            }
        })?;
        let mut gone = self.pods.remove(&(ns.to_string(), name.to_string()))?;
        let rv = self.bump();
        gone.metadata.resource_version = Some(rv.to_string());
        self.push(
            Kind::Pod,
            ns,
            "DELETED",
            serde_json::to_value(&gone).expect("json"),
        );
        self.logs.retain(|(n, p, _), _| !(n == ns && p == name));
        if account && !was_terminal {
            self.pod_finished(&gone);
        } else if account {
            self.sync_owner(&gone);
        }
        Some(pod)
    }

    /// `activeDeadlineSeconds` ran out: the job controller kills and deletes the active pods and
    /// fails the Job with `DeadlineExceeded`.
    pub(crate) fn job_deadline_exceeded(&mut self, ns: &str, job: &str) {
        if !self.jobs.contains_key(&(ns.to_string(), job.to_string())) {
            return;
        }
        let active: Vec<String> = self
            .pods_of(ns, job)
            .into_iter()
            .filter(|p| !is_terminal(p))
            .filter_map(|p| p.metadata.name)
            .collect();
        for pod in &active {
            self.delete_pod(ns, pod, false);
        }
        let failed_now = active.len() as i32;
        let msg = "Job was active longer than specified deadline";
        self.update_job_status(ns, job, |st| {
            st.failed = Some(st.failed.unwrap_or(0) + failed_now);
            st.conditions.get_or_insert_with(Vec::new).push(condition(
                "FailureTarget",
                "DeadlineExceeded",
                msg,
            ));
        });
        self.update_job_status(ns, job, |st| {
            st.conditions.get_or_insert_with(Vec::new).push(condition(
                "Failed",
                "DeadlineExceeded",
                msg,
            ));
        });
    }

    /// Deletes a Job with the garbage collector's handling of its pods. Returns the Job as the
    /// DELETE response carries it when deletion is not immediate (Foreground / Orphan).
    pub(crate) fn delete_job(
        &mut self,
        ns: &str,
        name: &str,
        policy: Option<&str>,
    ) -> Option<(Job, bool)> {
        let job = self.jobs.get(&(ns.to_string(), name.to_string()))?.clone();
        let pods: Vec<String> = self
            .pods_of(ns, name)
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        match policy {
            Some("Foreground") => {
                let mut marked = job.clone();
                marked.metadata.deletion_timestamp = Some(now());
                marked.metadata.deletion_grace_period_seconds = Some(0);
                marked.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
                let marked = self.put_job(marked, "MODIFIED");
                for pod in &pods {
                    self.delete_pod(ns, pod, false);
                }
                self.remove_job(ns, name);
                Some((marked, true))
            }
            Some("Background") => {
                let gone = self.remove_job(ns, name)?;
                for pod in &pods {
                    self.delete_pod(ns, pod, false);
                }
                Some((gone, false))
            }
            _ => {
                // Orphan, and batch/v1's default without a policy: the pods stay, unowned.
                let mut marked = job.clone();
                marked.metadata.deletion_timestamp = Some(now());
                marked.metadata.deletion_grace_period_seconds = Some(0);
                marked.metadata.finalizers = Some(vec!["orphan".into()]);
                let marked = self.put_job(marked, "MODIFIED");
                for pod in &pods {
                    self.edit_pod(ns, pod, |p| {
                        if let Some(refs) = p.metadata.owner_references.as_mut() {
                            refs.retain(|o| o.uid != uid);
                            if refs.is_empty() {
                                p.metadata.owner_references = None;
                            }
                        }
                    });
                }
                self.remove_job(ns, name);
                Some((marked, true))
            }
        }
    }

    /// The TTL-after-finished controller: deletes (Foreground) finished Jobs whose
    /// `ttlSecondsAfterFinished` has elapsed at `now + skew`. Returns the deleted names.
    pub(crate) fn run_ttl(&mut self, skew: Duration) -> Vec<(String, String)> {
        let at = chrono::Utc::now().timestamp() + skew.as_secs() as i64;
        let due: Vec<(String, String)> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                let ttl = j.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished);
                match (ttl, finish_time(j)) {
                    (Some(ttl), Some(done)) => done + i64::from(ttl) <= at,
                    _ => false,
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (ns, name) in &due {
            self.delete_job(ns, name, Some("Foreground"));
        }
        due
    }

    /// Ends retained history: every open watch ends, and a watch from any version handed out so
    /// far gets 410 Expired. The version moves on (as etcd's does with other writes), so a
    /// fresh list hands out a version that can be watched from.
    pub(crate) fn expire_history(&mut self) {
        self.bump();
        self.history.clear();
        self.history_start = self.rv;
        self.epoch += 1;
    }

    /// The main container of a pod: the first of `spec.containers`.
    pub(crate) fn main_container(&self, ns: &str, pod: &str) -> Option<String> {
        self.pods
            .get(&(ns.to_string(), pod.to_string()))?
            .spec
            .as_ref()?
            .containers
            .first()
            .map(|c| c.name.clone())
    }
}
