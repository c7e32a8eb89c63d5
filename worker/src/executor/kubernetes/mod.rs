//! `KubernetesExecutor`: one `batch/v1` Job per run in a dedicated namespace.
//!
//! - **Prepare** creates the Job ([`job::build`]) through a client-side rate limit; the name
//!   derives from the run id, so 409 AlreadyExists means "already launched" — one execution
//!   per run attempt. A Job runs from its creation: starting it is a no-op, discarding it
//!   deletes it.
//! - **Observe**: every worker reflects all of coderun's Jobs and Pods into `kube::runtime`
//!   stores (`watch`); one task per run (`actor`) reports their phases to the supervisor
//!   (idempotent), so several replicas watching at once agree. The work only one should do —
//!   following the log (`logs`), storing `log.txt` and the outputs, finishing (`finish`),
//!   giving up on an image — falls to the holder of the run's capacity permit (`ownership`),
//!   and passes to another worker (compare-and-swap on the permit) when that holder dies: a
//!   Job outlives its worker and is adopted, never run twice.
//! - **Stop** deletes the Job, always with a propagation policy (`Background`), from
//!   whichever worker hears of the stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coderun_shared::config::{
    DatasetSource, ExecutorKind, KubernetesSettings, LimitSettings, RunLimits, Settings,
};
use coderun_shared::datasets::Mount;
use coderun_shared::objects::RunObjects;
use coderun_shared::pipelines::{self, StepEnvironment};
use coderun_shared::runs::{OutputFile, Run, RunStatus};
use coderun_shared::transient::Dependency;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::executor::{Durability, Executor, LaunchError, Prepared, Start, Traits, environment};
use crate::supervisor::Supervisor;

mod actor;
mod finish;
pub mod job;
pub mod limiter;
pub mod logs;
pub mod observe;
pub mod outputs;
mod ownership;
pub mod presign;
pub mod streams;
mod watch;

use limiter::RateLimiter;
use ownership::Ownership;
use presign::Presigner;
use streams::LogStreams;
use watch::{Stores, Writers};
/// Jobs outlive their worker and run from their creation.
const TRAITS: Traits = Traits {
    kind: ExecutorKind::Kubernetes,
    durability: Durability::OutlivesWorker,
    start: Start::OnCreate,
};

/// A create the API server has not answered by then is retried later (and a create that did
/// land meanwhile answers 409 next time: launched).
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct KubernetesExecutor {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    settings: KubernetesSettings,
    runs: RunLimits,
    paths: LimitSettings,
    jobs: Api<Job>,
    pods: Api<Pod>,
    /// The connections the log followers stream over (HTTP/2 where the server speaks it).
    log_streams: Arc<LogStreams>,
    supervisor: Supervisor,
    presigner: Presigner,
    limiter: RateLimiter,
    /// coderun's Jobs and Pods as the reflectors last saw them.
    stores: Stores,
    /// The stores' write halves, until the watch loop takes them.
    writers: Mutex<Option<Writers>>,
    /// The Job reflector has listed every Job since it last (re)started.
    synced: AtomicBool,
    /// One task per run being observed, woken when anything about its run changes.
    actors: Mutex<HashMap<Uuid, Arc<tokio::sync::Notify>>>,
    /// Runs seen ended: no task is started for them again (pruned after the Job TTL).
    done: Mutex<HashMap<Uuid, tokio::time::Instant>>,
    /// Who holds which permit, and which holders are alive: refreshed every tick.
    ownership: Ownership,
    /// Runs being finished now (log, outputs, end): what `drain` waits for.
    finishing: AtomicUsize,
    /// Runs this worker has just launched, as they were when `dispatched` was recorded: their
    /// actors take them from here instead of reading each run back from Postgres. Entries no
    /// actor took are dropped after a minute.
    launched: Mutex<HashMap<Uuid, (Run, tokio::time::Instant)>>,
}

impl KubernetesExecutor {
    /// Connects to the API server and checks that the namespace's Jobs can be listed: start-up
    /// fails loudly rather than consuming runs it cannot launch.
    pub async fn connect(settings: &Settings, supervisor: Supervisor) -> anyhow::Result<Self> {
        let k8s = &settings.kubernetes;
        let config = config(k8s).await?;
        let client = Client::try_from(config.clone())?;
        let log_streams = Arc::new(
            LogStreams::new(config, &k8s.namespace, k8s.log_streams_h2c).map_err(|e| {
                anyhow::anyhow!(
                    "the log streams' connections cannot be set up ({}): {e:#}",
                    source_of(k8s)
                )
            })?,
        );
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
        let (stores, writers) = watch::stores(&k8s.namespace);
        Ok(Self {
            inner: Arc::new(Inner {
                settings: k8s.clone(),
                runs: settings.runs.clone(),
                paths: settings.limits.clone(),
                jobs,
                pods,
                log_streams,
                supervisor,
                presigner: Presigner::new(&settings.storage),
                limiter: RateLimiter::new(k8s.creates_per_second),
                stores,
                writers: Mutex::new(Some(writers)),
                synced: AtomicBool::new(false),
                actors: Mutex::new(HashMap::new()),
                done: Mutex::new(HashMap::new()),
                ownership: Ownership::default(),
                finishing: AtomicUsize::new(0),
                launched: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A client from `kubernetes.kubeconfig`, or inferred (in-cluster, `$KUBECONFIG`, `~/.kube`).
pub async fn client(settings: &KubernetesSettings) -> anyhow::Result<Client> {
    Ok(Client::try_from(config(settings).await?)?)
}

/// The client configuration from `kubernetes.kubeconfig`, or inferred.
async fn config(settings: &KubernetesSettings) -> anyhow::Result<kube::Config> {
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
    Ok(config)
}

fn source_of(settings: &KubernetesSettings) -> String {
    if settings.kubeconfig.is_empty() {
        "inferred configuration".to_owned()
    } else {
        format!("kubeconfig {}", settings.kubeconfig)
    }
}

impl Inner {
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
/// used in the first moments of the pod); the outputs URL must outlive the run. They are
/// signed for `storage.endpoint`: the pod is inside the cluster, like the servers. `mounts` are
/// the run's dataset versions ([`Supervisor::dataset_mounts`]): each file is fetched by URL and
/// checked against its sha256, or with `kubernetes.dataset_source = "volume"` each version is
/// mounted from its prepared claim.
pub async fn job_urls(
    presigner: &Presigner,
    settings: &KubernetesSettings,
    run: &Run,
    mounts: &[Mount],
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
    let mut dataset_volumes = Vec::new();
    for mount in mounts {
        if settings.dataset_source == DatasetSource::Volume {
            dataset_volumes.push(job::DatasetVolume {
                name: mount.name.clone(),
                claim: format!(
                    "{}{}-v{}",
                    settings.dataset_volume_prefix, mount.name, mount.version
                ),
            });
            continue;
        }
        for file in &mount.files {
            datasets.push(job::DatasetFile {
                path: format!("{}/{}", mount.name, file.path),
                url: presigner.get(&file.key, short).await?,
                size: file.size,
                sha256: file.sha256.clone(),
            });
        }
    }
    Ok(job::JobUrls {
        code,
        outputs,
        datasets,
        dataset_volumes,
        step: None,
    })
}

/// A pipeline step's part of its Job: its `PARAM_<NAME>` variables and a presigned GET of each
/// output file of the earlier steps (only theirs: nothing else of other runs).
pub async fn step_urls(
    presigner: &Presigner,
    settings: &KubernetesSettings,
    step: &StepEnvironment,
    outputs: &[(String, Uuid, Vec<OutputFile>)],
) -> anyhow::Result<job::StepUrls> {
    let short = Duration::from_secs(settings.presign_seconds.max(1));
    let mut inputs = Vec::new();
    for (name, run, files) in outputs {
        anyhow::ensure!(
            pipelines::is_safe_name(name),
            "step name {name:?} is not simple"
        );
        let objects = RunObjects::new(*run);
        for file in files {
            inputs.push(job::InputFile {
                path: format!("{name}/{}", file.path),
                url: presigner.get(&objects.output(&file.path), short).await?,
                size: file.size.max(0) as u64,
            });
        }
    }
    Ok(job::StepUrls {
        env: environment::param_vars(&step.params),
        inputs,
    })
}

/// Where the pod uploads its outputs archive.
pub fn outputs_key(run: Uuid) -> String {
    RunObjects::new(run).outputs_archive()
}

/// A created Job: it runs already.
struct Created {
    inner: Arc<Inner>,
    run: Run,
}

#[async_trait]
impl Prepared for Created {
    /// The Job runs already; `dispatched` is recorded: the run's actor learns it from here.
    async fn start(self: Box<Self>) {
        let Created { inner, mut run } = *self;
        let id = run.id;
        run.status = RunStatus::Dispatched;
        inner
            .launched
            .lock()
            .expect("launched")
            .insert(id, (run, tokio::time::Instant::now()));
        if let Some(notify) = inner.actors.lock().expect("actors").get(&id) {
            notify.notify_one();
        }
    }

    async fn discard(self: Box<Self>) {
        self.inner.stop(self.run.id).await;
    }
}

impl Inner {
    async fn stop(&self, run_id: Uuid) {
        match self.delete_job(run_id).await {
            Ok(()) => tracing::info!(run = %run_id, "deleted the Job (stop)"),
            Err(e) => {
                // The stop sweep tries again.
                crate::metrics::executor_error(ExecutorKind::Kubernetes, "stop");
                tracing::warn!(run = %run_id, error = %e, "cannot delete the Job")
            }
        }
    }

    /// Creates the run's Job; one that exists already was launched before.
    async fn create(&self, run: &Run) -> Result<(), LaunchError> {
        let started = tokio::time::Instant::now();
        let resilience = self.supervisor.resilience();
        let mounts = self
            .supervisor
            .dataset_mounts(&run.datasets)
            .await
            .map_err(|e| match crate::resilience::classify(&e) {
                Some(_) => LaunchError::Retryable(format!("cannot read the run's datasets: {e:#}")),
                None => LaunchError::Permanent(format!("{e:#}")),
            })?;
        let urls = async {
            let mut urls = job_urls(&self.presigner, &self.settings, run, &mounts).await?;
            if let Some(step) = self.supervisor.step_environment(run).await? {
                let mut outputs = Vec::new();
                for (name, id) in &step.inputs {
                    outputs.push((name.clone(), *id, self.supervisor.run_outputs(*id).await?));
                }
                urls.step =
                    Some(step_urls(&self.presigner, &self.settings, &step, &outputs).await?);
            }
            anyhow::Ok(urls)
        }
        .await
        .map_err(|e| {
            if let Some(dep) = crate::resilience::classify(&e) {
                resilience.failure(dep, &e);
            }
            LaunchError::Retryable(format!("cannot presign the run's URLs: {e:#}"))
        })?;
        let job = job::build(run, &self.settings, &urls);
        let built = started.elapsed();
        self.limiter.until_ready().await;
        let sending = tokio::time::Instant::now();
        let created = tokio::time::timeout(
            CREATE_TIMEOUT,
            self.jobs.create(&PostParams::default(), &job),
        )
        .await;
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
                tracing::info!(
                    run = %run.id,
                    job = %job::job_name(run.id),
                    build_us = built.as_micros() as u64,
                    create_us = sending.elapsed().as_micros() as u64,
                    "created the Job"
                );
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
}

#[async_trait]
impl Executor for KubernetesExecutor {
    async fn prepare(&self, run: &Run) -> Result<Box<dyn Prepared>, LaunchError> {
        self.inner.create(run).await?;
        // This worker holds the run's permit: its actor owns the run from the first look.
        self.inner
            .ownership
            .hold(self.inner.supervisor.me(), run.id);
        Ok(Box::new(Created {
            inner: self.inner.clone(),
            run: run.clone(),
        }))
    }

    fn traits(&self) -> Traits {
        TRAITS
    }

    async fn stop(&self, run_id: Uuid) {
        self.inner.stop(run_id).await;
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
