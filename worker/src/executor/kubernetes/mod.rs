//! `KubernetesExecutor`: one `batch/v1` Job per run in a dedicated namespace.
//!
//! - **Launch** creates the Job ([`job::build`]) through a client-side rate limit; the name
//!   derives from the run id, so 409 AlreadyExists means "already launched" (invariant 3).
//! - **Observe**: every worker watches all of coderun's Jobs and Pods ([`watch`]) and records
//!   their phases through the idempotent recorder, so several replicas watching at once agree.
//!   The work only one should do — following the log, storing `log.txt` and the outputs,
//!   finishing, giving up on an image — falls to the holder of the run's capacity permit, and
//!   passes to another worker (compare-and-swap on the permit) when that holder dies: a Job
//!   outlives its worker and is adopted, never run twice.
//! - **Stop** deletes the Job, always with a propagation policy (`Background`), from
//!   whichever worker hears of the stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use coderun_shared::config::{KubernetesSettings, LimitSettings, RunLimits, Settings};
use coderun_shared::domain::FilePath;
use coderun_shared::objects::RunObjects;
use coderun_shared::redis::Keys;
use coderun_shared::runs::Run;
use coderun_shared::storage::Storage;
use coderun_shared::transient::Dependency;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::executor::{Executor, LaunchError};
use crate::recorder::Recorder;

pub mod job;
pub mod limiter;
pub mod logs;
pub mod observe;
pub mod outputs;
pub mod presign;
mod watch;

use limiter::RateLimiter;
use presign::Presigner;
use watch::{Cache, Owners};

/// The executor's name, on runs and in `worker.executor`.
pub const KIND: &str = "kubernetes";
/// A create the API server has not answered by then is retried later (and a create that did
/// land meanwhile answers 409 next time: launched).
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the executor needs besides the kube client.
pub struct Parts {
    pub name: String,
    pub recorder: Recorder,
    pub redis: fred::prelude::Client,
    pub keys: Keys,
}

#[derive(Clone)]
pub struct KubernetesExecutor {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// This worker's name: the owner written on permits.
    me: String,
    settings: KubernetesSettings,
    runs: RunLimits,
    paths: LimitSettings,
    lease_grace_seconds: u64,
    jobs: Api<Job>,
    pods: Api<Pod>,
    recorder: Recorder,
    redis: fred::prelude::Client,
    keys: Keys,
    presigner: Presigner,
    limiter: RateLimiter,
    /// coderun's Jobs by run, as the watcher last saw them.
    job_cache: Mutex<Cache<Job>>,
    /// The newest Pod of each run.
    pod_cache: Mutex<Cache<Pod>>,
    /// The Job watcher has listed every Job since it last (re)started.
    synced: AtomicBool,
    /// One task per run being observed, woken when anything about its run changes.
    actors: Mutex<HashMap<Uuid, Arc<tokio::sync::Notify>>>,
    /// Runs seen ended: no task is started for them again (pruned after the Job TTL).
    done: Mutex<HashMap<Uuid, tokio::time::Instant>>,
    /// Who holds which permit, and which holders are alive: refreshed every tick.
    owners: RwLock<Owners>,
    /// Runs being finished now (log, outputs, end): what `drain` waits for.
    finishing: AtomicUsize,
}

impl KubernetesExecutor {
    /// Connects to the API server and checks that the namespace's Jobs can be listed: start-up
    /// fails loudly rather than consuming runs it cannot launch.
    pub async fn connect(settings: &Settings, parts: Parts) -> anyhow::Result<Self> {
        let k8s = &settings.kubernetes;
        let client = client(k8s).await?;
        let jobs: Api<Job> = Api::namespaced(client.clone(), &k8s.namespace);
        let pods: Api<Pod> = Api::namespaced(client, &k8s.namespace);
        jobs.list(&ListParams::default().labels(job::SELECTOR).limit(1))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot list Jobs in namespace `{}` ({}): {e}; check kubernetes.kubeconfig, \
                     the namespace, and that the worker's role may create, watch and delete Jobs \
                     and read Pods and their logs",
                    k8s.namespace,
                    source_of(k8s)
                )
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                me: parts.name,
                settings: k8s.clone(),
                runs: settings.runs.clone(),
                paths: settings.limits.clone(),
                lease_grace_seconds: settings.capacity.lease_grace_seconds,
                jobs,
                pods,
                recorder: parts.recorder,
                redis: parts.redis,
                keys: parts.keys,
                presigner: Presigner::new(&settings.storage),
                limiter: RateLimiter::new(k8s.creates_per_second),
                job_cache: Mutex::new(Cache::default()),
                pod_cache: Mutex::new(Cache::default()),
                synced: AtomicBool::new(false),
                actors: Mutex::new(HashMap::new()),
                done: Mutex::new(HashMap::new()),
                owners: RwLock::new(Owners::default()),
                finishing: AtomicUsize::new(0),
            }),
        })
    }
}

/// A client from `kubernetes.kubeconfig`, or inferred (in-cluster, `$KUBECONFIG`, `~/.kube`).
pub async fn client(settings: &KubernetesSettings) -> anyhow::Result<Client> {
    let config = if settings.kubeconfig.is_empty() {
        kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "no Kubernetes configuration found ({e}): run the worker in a cluster, or set \
                 kubernetes.kubeconfig (CODERUN__KUBERNETES__KUBECONFIG)"
            )
        })?
    } else {
        let kubeconfig = Kubeconfig::read_from(&settings.kubeconfig).map_err(|e| {
            anyhow::anyhow!(
                "cannot read kubernetes.kubeconfig {}: {e}",
                settings.kubeconfig
            )
        })?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "kubernetes.kubeconfig {} is unusable: {e}",
                    settings.kubeconfig
                )
            })?
    };
    Ok(Client::try_from(config)?)
}

fn source_of(settings: &KubernetesSettings) -> String {
    if settings.kubeconfig.is_empty() {
        "inferred configuration".to_owned()
    } else {
        format!("kubeconfig {}", settings.kubeconfig)
    }
}

impl Inner {
    /// The permit TTL of a run: as the consumer sets it.
    fn lease_ttl_ms(&self, run: &Run) -> u64 {
        (u64::from(run.spec.limits.wall_seconds) + self.lease_grace_seconds) * 1000
    }

    /// Deletes the run's Job and, through `Background` propagation, its Pods. A Job already
    /// gone is fine.
    async fn delete_job(&self, run: Uuid) -> kube::Result<()> {
        match self
            .jobs
            .delete(&job::job_name(run), &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The presigned URLs `run`'s Job carries. The code and dataset URLs are short-lived (they are
/// used in the first moments of the pod); the outputs URL must outlive the run.
pub async fn job_urls(
    presigner: &Presigner,
    storage: &Storage,
    settings: &KubernetesSettings,
    paths: &LimitSettings,
    run: &Run,
) -> anyhow::Result<job::JobUrls> {
    let short = Duration::from_secs(settings.presign_seconds.max(1));
    let long = short
        + Duration::from_secs(
            settings.image_pull_timeout_seconds
                + u64::from(run.spec.limits.wall_seconds)
                + u64::from(settings.termination_grace_seconds)
                + 60,
        );
    let code = presigner.get(&run.code_key(), short).await?;
    let outputs = presigner.put(&outputs_key(run.id), long).await?;
    let mut datasets = Vec::new();
    for name in &run.datasets {
        let prefix = format!("datasets/{name}/");
        for (key, size) in storage.list(&prefix).await? {
            // Object keys are not trusted as paths: the rules of task files apply.
            let Ok(path) = FilePath::parse(&key[prefix.len()..], paths) else {
                tracing::warn!(%key, "skipping a dataset object whose key is not a safe path");
                continue;
            };
            datasets.push(job::DatasetFile {
                path: format!("{name}/{}", path.as_str()),
                url: presigner.get(&key, short).await?,
                size,
            });
        }
    }
    Ok(job::JobUrls {
        code,
        outputs,
        datasets,
    })
}

/// Where the pod uploads its outputs archive.
pub fn outputs_key(run: Uuid) -> String {
    RunObjects::new(run).outputs_archive()
}

#[async_trait]
impl Executor for KubernetesExecutor {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn launch(&self, run: &Run) -> Result<(), LaunchError> {
        let inner = &self.inner;
        let urls = job_urls(
            &inner.presigner,
            &inner.recorder.storage,
            &inner.settings,
            &inner.paths,
            run,
        )
        .await
        .map_err(|e| {
            if let Some(dep) = crate::resilience::classify(&e) {
                inner.recorder.resilience.failure(dep, &e);
            }
            LaunchError::Retryable(format!("cannot presign the run's URLs: {e:#}"))
        })?;
        let job = job::build(run, &inner.settings, &urls);
        inner.limiter.until_ready().await;
        let created = tokio::time::timeout(
            CREATE_TIMEOUT,
            inner.jobs.create(&PostParams::default(), &job),
        )
        .await;
        let resilience = &inner.recorder.resilience;
        match &created {
            Ok(Ok(_)) => resilience.success(Dependency::Kubernetes),
            Ok(Err(e)) if crate::resilience::kube_is_transient(e) => {
                resilience.failure(Dependency::Kubernetes, e)
            }
            Err(_) => resilience.failure(Dependency::Kubernetes, &"the create timed out"),
            Ok(Err(_)) => {}
        }
        match created {
            Ok(Ok(_)) => {
                tracing::info!(run = %run.id, job = %job::job_name(run.id), "created the Job");
                Ok(())
            }
            Ok(Err(kube::Error::Api(status))) if status.is_already_exists() => {
                tracing::info!(run = %run.id, "the Job exists already: launched before");
                Ok(())
            }
            Ok(Err(kube::Error::Api(status))) if status.is_invalid() || status.code == 400 => {
                Err(LaunchError::Permanent(format!(
                    "the API server refused the Job: {}",
                    status.message
                )))
            }
            Ok(Err(e)) => Err(LaunchError::Retryable(format!(
                "creating the Job failed: {e}"
            ))),
            Err(_) => Err(LaunchError::Retryable(format!(
                "the API server did not answer the create within {CREATE_TIMEOUT:?}"
            ))),
        }
    }

    async fn start(&self, run_id: Uuid, go: bool) {
        // A Job starts when it is created; a canceled run's Job is deleted before its program
        // gets anywhere (the fetch step comes first).
        if !go {
            self.stop(run_id).await;
        }
    }

    async fn stop(&self, run_id: Uuid) {
        match self.inner.delete_job(run_id).await {
            Ok(()) => tracing::info!(run = %run_id, "deleted the Job (stop)"),
            // The stop sweep tries again.
            Err(e) => tracing::warn!(run = %run_id, error = %e, "cannot delete the Job"),
        }
    }

    /// Every run whose Job is active, whichever worker launched it: every worker renews their
    /// permits (only the holder's renewal counts) and carries stops to them.
    fn live(&self) -> Vec<Uuid> {
        self.inner.live()
    }

    async fn drain(&self, grace: Duration) {
        // Jobs outlive this worker; only finishing a run (storing its log and outputs) is
        // worth waiting for.
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.finishing.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn adopts(&self) -> bool {
        true
    }

    async fn probe(&self) -> anyhow::Result<()> {
        self.inner
            .jobs
            .list(&ListParams::default().labels(job::SELECTOR).limit(1))
            .await?;
        Ok(())
    }

    async fn exists(&self, run: &Run) -> Option<bool> {
        self.inner.exists(run.id).await
    }

    async fn run(&self, shutdown: CancellationToken) {
        self.inner.clone().watch(shutdown).await;
    }
}
