//! Settings: one typed tree built from compiled defaults (`defaults.toml`), an optional
//! `coderun.toml` and `CODERUN__SECTION__KEY` environment variables, in that order.
//!
//! Secrets are [`SecretString`]s so `Debug` never prints them, and [`Settings::validate`]
//! refuses the built-in development secret outside the local stack.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("defaults.toml");
const DEV_JWT_SECRET: &str = "coderun-local-development-secret-do-not-use";
const DEV_S3_SECRET: &str = "coderun-secret";
/// The placeholder the deployment examples carry (`CHANGE-ME…`): a secret still holding it was
/// never filled in.
const PLACEHOLDER: &str = "CHANGE-ME";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration could not be read: {0}")]
    Read(#[from] config::ConfigError),
    #[error("configuration is invalid: {0}")]
    Invalid(String),
}

/// The whole configuration of coderun.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// True only for the local stack and tests: allows the development JWT secret and seeds the
    /// demo users.
    pub local_stack: bool,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub database: DatabaseSettings,
    pub storage: StorageSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub login: LoginSettings,
    pub limits: LimitSettings,
    pub queue: QueueSettings,
    pub capacity: CapacitySettings,
    pub runs: RunLimits,
    pub retention: RetentionSettings,
    pub worker: WorkerSettings,
    pub run: RunSettings,
    pub specs: BTreeMap<String, Spec>,
    pub languages: BTreeMap<String, LanguageSettings>,
    pub kubernetes: KubernetesSettings,
    pub resilience: ResilienceSettings,
    pub datasets: DatasetSettings,
    pub webhooks: WebhookSettings,
}

/// Status callbacks (`crate::webhooks`): endpoints, the delivery schedule, where requests may go.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// The consumer group of the `{prefix}:webhooks` stream.
    pub group: String,
    /// Seals endpoints' signing keys at rest when not empty.
    pub secret_key: SecretString,
    pub max_endpoints_per_user: u32,
    pub max_url_bytes: usize,
    /// One attempt's whole request (connect, send, answer) may take this long.
    pub timeout_ms: u64,
    /// Bytes of an answer read at most.
    pub max_response_bytes: usize,
    /// The delays before each retry; the first attempt is immediate.
    #[serde(deserialize_with = "delays")]
    pub retry_schedule: Vec<std::time::Duration>,
    /// Failures in a row, over at least `disable_after_seconds`, that disable an endpoint.
    pub disable_after_failures: u32,
    pub disable_after_seconds: u64,
    /// Requests may go to loopback addresses (the local stack, tests).
    pub allow_loopback: bool,
    /// Requests may go to private, link-local and other non-public addresses.
    pub allow_private: bool,
    /// A PEM file of extra certificate authorities https endpoints may be signed by, beside
    /// the system's (empty: the system's only).
    pub extra_roots_file: String,
    /// Attempts one worker sends at once.
    pub concurrency: usize,
    /// The relay's period when nothing woke it.
    pub poll_ms: u64,
    /// An enqueued delivery still unanswered after this long is enqueued again.
    pub requeue_after_seconds: u64,
    /// Events older than this many days, none of whose deliveries is still pending, are
    /// deleted with their deliveries and attempts. 0: kept forever.
    pub keep_days: u32,
}

/// `"5s 5m 30m 2h"` (also comma-separated; units `ms`, `s`, `m`, `h`) as durations.
pub fn parse_delays(text: &str) -> Result<Vec<std::time::Duration>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let split = part
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| format!("`{part}` has no unit (ms, s, m or h)"))?;
            let (number, unit) = part.split_at(split);
            let number: u64 = number
                .parse()
                .map_err(|_| format!("`{part}` is not a number and a unit"))?;
            let millis = match unit {
                "ms" => number,
                "s" => number * 1_000,
                "m" => number * 60_000,
                "h" => number * 3_600_000,
                _ => return Err(format!("`{part}`: the unit must be ms, s, m or h")),
            };
            Ok(std::time::Duration::from_millis(millis))
        })
        .collect()
}

fn delays<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<std::time::Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_delays(&text).map_err(serde::de::Error::custom)
}

/// Datasets teachers publish (`crate::datasets`): their quotas and uploads.
#[derive(Debug, Clone, Deserialize)]
pub struct DatasetSettings {
    /// The bytes one dataset's draft (and so each of its versions) may hold.
    pub max_dataset_bytes: u64,
    /// The bytes every dataset's versions and drafts together may hold.
    pub max_total_bytes: u64,
    /// The files one draft (and so one version) may hold.
    pub max_files: u32,
    /// A multipart upload not completed this long after it was created is aborted by the sweep.
    pub upload_max_age_seconds: u64,
    /// Lifetime of the presigned part URLs of an upload.
    pub upload_presign_seconds: u64,
    /// Where a local worker keeps the dataset versions its runs mount (one read-only copy per
    /// version, keyed by its checksum); empty: `{worker.work_dir}/.datasets`.
    pub cache_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    /// The built web app (`index.html` + `assets/`) served at `/`; empty: no app.
    pub web_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// May carry a password, hence secret.
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: SecretString,
    /// MinIO and s3s-fs want `http://host/bucket/key` rather than virtual-hosted buckets.
    pub path_style: bool,
    /// Create the bucket at start-up when it is missing (local stack, tests).
    pub create_bucket: bool,
    pub presign_seconds: u64,
    /// The address clients (browsers, students' scripts) reach S3 at: every presigned URL
    /// handed to a client is signed for it, while the servers keep using `endpoint`. Empty:
    /// `endpoint`.
    pub public_endpoint: String,
    /// A task archive larger than this (bytes of files) is built into the bucket and answered
    /// with a redirect instead of streamed; 0: always streamed. Lambda needs it (its responses
    /// are buffered and at most 6 MB).
    pub archive_redirect_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: SecretString,
    /// Prefix of every key coderun uses.
    pub prefix: String,
    /// A command Redis has not answered by then fails (and is retried by its caller), instead
    /// of waiting out a whole outage; must exceed `queue.block_ms`.
    pub command_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueueSettings {
    pub group: String,
    pub max_deliveries: u64,
    pub claim_idle_ms: u64,
    pub block_ms: u64,
    /// Entries one worker reads (and hands off together) at most per XREADGROUP.
    pub read_batch: u32,
    pub trim_after_hours: u64,
}

/// How the worker waits out an outage of a dependency: retries with capped exponential backoff
/// and jitter, and one circuit breaker per dependency.
#[derive(Debug, Clone, Deserialize)]
pub struct ResilienceSettings {
    pub retry_initial_ms: u64,
    pub retry_max_delay_ms: u64,
    /// How long one step (a fetch, an upload, a phase record) keeps retrying a transient
    /// failure before giving up.
    pub retry_max_seconds: u64,
    /// Consecutive transient failures of a dependency that open its breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before its first half-open probe; doubles per failed
    /// probe up to `breaker_max_open_ms`.
    pub breaker_open_ms: u64,
    pub breaker_max_open_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CapacitySettings {
    pub default: u32,
    pub lease_grace_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RunLimits {
    pub max_active_per_user: u32,
    pub log_max_bytes: u64,
    pub log_page_lines: u32,
    pub output_max_files: u32,
    pub output_max_bytes: u64,
    pub requeue_after_seconds: u64,
    pub live_log_ttl_seconds: u64,
    /// Attempts of a run whose execution was lost with its worker; the last one lost fails
    /// `executor_lost`.
    pub max_attempts: u32,
    /// Bytes a user's kept runs may hold in the bucket (logs, outputs, snapshots); a submit
    /// beyond it is refused. 0: no quota.
    pub storage_quota_bytes: u64,
    /// Live log streams (server-sent events) one user may hold open across the fleet.
    pub log_streams_per_user: u32,
    /// Live log streams one API process serves at once.
    pub log_streams_per_process: u32,
}

/// How long runs keep their stored objects, and the sweeps that remove what is no longer kept.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Terminal runs finished more than this many days ago lose their log, outputs and
    /// snapshot (the row stays, marked purged). 0: kept forever.
    pub max_age_days: u32,
    /// Beyond the newest this-many runs of a task, older terminal runs are purged too. 0: no
    /// limit.
    pub keep_per_task: u32,
    /// How often each worker sweeps (deleted runs' objects, the retention, unused snapshots).
    pub sweep_seconds: u64,
    /// A snapshot no kept run uses is deleted once nobody has used it for this long (longer
    /// than any submit takes).
    pub snapshot_grace_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub name: String,
    pub executor: ExecutorKind,
    pub heartbeat_seconds: u64,
    pub heartbeat_ttl_seconds: u64,
    pub janitor_seconds: u64,
    pub reconcile_seconds: u64,
    pub work_dir: std::path::PathBuf,
    pub local_slots: u32,
    pub sandbox_uid_base: u32,
    pub shutdown_grace_seconds: u64,
    /// Fault injection for tests (`after_permit`, `amid_launches`, `before_dispatched`,
    /// `after_launch`, `before_ack`); empty otherwise.
    pub crash_at: String,
    /// Where the worker serves `/metrics` and `/readyz`; empty: nowhere.
    pub http_bind: String,
    /// The built language runtimes of the local executor (`infra/runtimes/build.py`); empty:
    /// `$CODERUN_RUNTIMES_DIR`, else `/var/cache/coderun/runtimes` as root, else
    /// `$CODERUN_CACHE/runtimes`, else `~/.cache/coderun/runtimes`.
    pub runtimes_dir: std::path::PathBuf,
}

/// Where a worker executes runs (`worker.executor`); also recorded on each run it launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// A bubblewrap sandbox on the worker's own host; the execution dies with its worker.
    Local,
    /// A `batch/v1` Job per run; the execution outlives the worker that created it.
    Kubernetes,
}

impl ExecutorKind {
    /// The name in settings and on runs.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Kubernetes => "kubernetes",
        }
    }
}

impl std::fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: SecretString,
    pub token_ttl_seconds: u64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
}

/// How logins are throttled. The counters live in Redis, so every API process shares them.
#[derive(Debug, Clone, Deserialize)]
pub struct LoginSettings {
    /// A request header a trusted gateway sets to the client's address (its right-most
    /// comma-separated value is taken); empty: the socket peer's address.
    pub client_address_header: String,
    /// Failed logins of one account before it is locked out.
    pub lockout_after_failures: u32,
    /// The first lockout; each further failure doubles it, up to `lockout_max_seconds`.
    pub lockout_base_seconds: u64,
    pub lockout_max_seconds: u64,
    /// An account's failures are forgotten this long after its last one (or at a success).
    pub failure_memory_seconds: u64,
    /// The window of the per-address counters.
    pub address_window_seconds: u64,
    /// Login attempts (successful or not) from one address per window.
    pub address_max_attempts: u32,
    /// Failed logins from one address per window.
    pub address_max_failures: u32,
    /// Password hashes one process computes at once; 0: sized from the process's memory.
    pub max_concurrent_hashes: u32,
    /// With `max_concurrent_hashes = 0`: the share of the memory limit hashes may hold.
    pub hash_memory_percent: u32,
    /// How long a login waits for a free hash slot before it is answered 429.
    pub hash_wait_seconds: u64,
}

/// Size and count limits on what users store. Every one is enforced at the HTTP edge or inside
/// the transaction that would break it.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub max_file_bytes: u64,
    pub max_files_per_task: u32,
    pub max_task_bytes: u64,
    pub max_tasks_per_user: u32,
    pub max_batch_bytes: u64,
    pub max_path_bytes: usize,
    pub max_path_depth: usize,
    pub default_per_page: u32,
    pub max_per_page: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RunSettings {
    pub default_spec: String,
}

/// A named resource preset a run is executed with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Spec {
    pub description: String,
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub pids: u32,
    pub wall_seconds: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LanguageSettings {
    pub display_name: String,
    pub image: String,
    pub main_file: String,
    /// The default command; `{main}` stands for the task's main file, `{main_stem}` for its
    /// name without folder and extension (a Java or Scala main class).
    pub command: String,
    pub default_files: Vec<DefaultFile>,
    /// The runtime recipe (`infra/runtimes/<runtime>.toml`) the local executor runs it in.
    pub runtime: String,
    /// The language's version, as its runtime recipe declares it (shown in the catalogue).
    pub version: String,
    /// Its main libraries with their versions, as the recipe declares them.
    pub libraries: Vec<String>,
}

impl LanguageSettings {
    /// The default command for a task whose main file is `main_file`, with the path quoted for
    /// `sh -c`.
    pub fn command_for(&self, main_file: &str) -> String {
        // A leading `./` keeps a name like `-x.py` from reading as an option.
        let quoted = format!("'./{}'", main_file.replace('\'', "'\\''"));
        let plain = main_file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
            && !main_file.starts_with('-');
        let file_name = main_file.rsplit('/').next().unwrap_or(main_file);
        let stem = file_name.split('.').next().unwrap_or(file_name);
        let stem_plain = !stem.is_empty()
            && stem
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$');
        self.command
            .replace("{main}", if plain { main_file } else { &quoted })
            .replace("{main_stem}", if stem_plain { stem } else { "Main" })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DefaultFile {
    pub path: String,
    pub content: String,
}

/// The Kubernetes executor (`worker.executor = "kubernetes"`): one `batch/v1` Job per run.
#[derive(Debug, Clone, Deserialize)]
pub struct KubernetesSettings {
    /// Where the run Jobs live; the namespace's NetworkPolicy denies their egress.
    pub namespace: String,
    /// A kubeconfig file; empty: in-cluster service account, else `$KUBECONFIG` / `~/.kube`.
    pub kubeconfig: String,
    /// Job creates per second, per worker: a client-side limit (the API server is shared and
    /// kube has no limiter of its own).
    pub creates_per_second: f64,
    pub ttl_seconds_after_finished: u32,
    /// A run whose image cannot be pulled for this long fails `image_pull_failed`.
    pub image_pull_timeout_seconds: u64,
    /// An image with `sh`, `curl`, `tar` and `sha256sum`: fetches the code and datasets, and
    /// uploads the outputs.
    pub init_image: String,
    /// Lifetime of the presigned code and dataset URLs a Job carries: short, as they are
    /// readable by whoever can read the Job.
    pub presign_seconds: u64,
    /// The run pods' service account; empty: the namespace's `default`. No token is mounted
    /// either way.
    pub service_account: String,
    pub image_pull_secrets: Vec<String>,
    /// The pod's termination grace: also the time the outputs upload gets once the program ends.
    pub termination_grace_seconds: u32,
    /// How a Job gets its datasets: `fetch` (the init container downloads each file by
    /// presigned URL and checks its sha256) or `volume` (a ReadOnlyMany PersistentVolumeClaim per
    /// dataset version, `{dataset_volume_prefix}{name}-v{N}`, prepared once by the operator).
    pub dataset_source: DatasetSource,
    pub dataset_volume_prefix: String,
    /// Speak HTTP/2 without TLS (prior knowledge) for the log followers' connections to an
    /// `http://` API server. Over `https` HTTP/2 is negotiated whatever this says.
    pub log_streams_h2c: bool,
}

/// `kubernetes.dataset_source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetSource {
    Fetch,
    Volume,
}

impl Settings {
    /// Defaults, then `coderun.toml` (or the file named by `CODERUN_CONFIG`), then the
    /// environment; validated.
    pub fn load() -> Result<Self, Error> {
        let file = std::env::var("CODERUN_CONFIG").unwrap_or_else(|_| "coderun.toml".into());
        Self::load_from(Config::builder().add_source(File::with_name(&file).required(false)))
    }

    /// Defaults overridden by `overrides` (`("limits.max_file_bytes", "10")` …) and nothing
    /// else: what tests and tools use to build settings without touching the environment.
    pub fn with_overrides<'a>(
        overrides: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Result<Self, Error> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        for (key, value) in overrides {
            builder = builder.set_override(key, value)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn load_from(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Self, Error> {
        let settings: Settings = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(builder.build()?)
            .add_source(
                Environment::with_prefix("CODERUN")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rules no single field can state, for every binary: the S3 secret outside the local
    /// stack, the default spec, languages that name their own main file. The API adds
    /// [`validate_api`](Self::validate_api); the worker never needs the JWT secret.
    pub fn validate(&self) -> Result<(), Error> {
        let s3_secret = self.storage.secret_key.expose_secret();
        if !self.local_stack && (s3_secret == DEV_S3_SECRET || s3_secret.contains(PLACEHOLDER)) {
            return Err(Error::Invalid(
                "storage.secret_key is the built-in development secret (or a CHANGE-ME \
                 placeholder); set CODERUN__STORAGE__SECRET_KEY to the S3 secret key of this \
                 installation (or CODERUN__LOCAL_STACK=true for a throw-away local stack)"
                    .into(),
            ));
        }
        if self.login.lockout_after_failures == 0
            || self.login.lockout_base_seconds == 0
            || self.login.lockout_max_seconds < self.login.lockout_base_seconds
            || self.login.address_window_seconds == 0
            || self.login.failure_memory_seconds == 0
        {
            return Err(Error::Invalid(
                "login: lockout_after_failures, lockout_base_seconds, address_window_seconds and \
                 failure_memory_seconds must be at least 1, and lockout_max_seconds at least \
                 lockout_base_seconds"
                    .into(),
            ));
        }
        if !(1..=90).contains(&self.login.hash_memory_percent) {
            return Err(Error::Invalid(
                "login.hash_memory_percent must be between 1 and 90".into(),
            ));
        }
        if !self.specs.contains_key(&self.run.default_spec) {
            return Err(Error::Invalid(format!(
                "run.default_spec names `{}`, which is not one of the specs",
                self.run.default_spec
            )));
        }
        for (name, language) in &self.languages {
            if !language
                .default_files
                .iter()
                .any(|f| f.path == language.main_file)
            {
                return Err(Error::Invalid(format!(
                    "language `{name}`: main_file `{}` is not among its default_files",
                    language.main_file
                )));
            }
        }
        let hooks = &self.webhooks;
        if hooks.timeout_ms == 0
            || hooks.concurrency == 0
            || hooks.poll_ms == 0
            || hooks.disable_after_failures == 0
            || hooks.requeue_after_seconds * 1000 <= hooks.timeout_ms
        {
            return Err(Error::Invalid(
                "webhooks: timeout_ms, concurrency, poll_ms and disable_after_failures must be at \
                 least 1, and requeue_after_seconds must exceed timeout_ms"
                    .into(),
            ));
        }
        if self.limits.max_per_page == 0 || self.limits.default_per_page > self.limits.max_per_page
        {
            return Err(Error::Invalid(
                "limits.default_per_page must be between 1 and limits.max_per_page".into(),
            ));
        }
        Ok(())
    }

    /// What only the API needs: a real JWT secret outside the local stack, long enough.
    pub fn validate_api(&self) -> Result<(), Error> {
        let secret = self.auth.jwt_secret.expose_secret();
        if !self.local_stack && (secret == DEV_JWT_SECRET || secret.contains(PLACEHOLDER)) {
            return Err(Error::Invalid(
                "auth.jwt_secret is the built-in development secret (or a CHANGE-ME \
                 placeholder); set CODERUN__AUTH__JWT_SECRET to a random string of at least 32 \
                 characters (or CODERUN__LOCAL_STACK=true for a throw-away local stack)"
                    .into(),
            ));
        }
        if secret.len() < 32 {
            return Err(Error::Invalid(
                "auth.jwt_secret must be at least 32 characters long".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Vec<(&'static str, String)> {
        vec![("local_stack", "true".into())]
    }

    #[test]
    fn the_compiled_defaults_describe_four_languages_and_three_specs() {
        let settings = Settings::with_overrides(local()).unwrap();
        let languages: Vec<_> = settings.languages.keys().cloned().collect();
        assert_eq!(languages, ["java", "python", "r", "scala"]);
        assert_eq!(settings.specs.len(), 3);
        assert_eq!(settings.limits.max_file_bytes, 10 * 1024 * 1024);
    }

    /// Settings outside the local stack with a real S3 secret: what a worker starts with.
    fn deployed() -> Vec<(&'static str, String)> {
        vec![
            ("local_stack", "false".into()),
            (
                "storage.secret_key",
                "a-real-s3-secret-of-this-installation".into(),
            ),
        ]
    }

    #[test]
    fn the_development_jwt_secret_is_refused_outside_the_local_stack() {
        let settings = Settings::with_overrides(deployed()).unwrap();
        let err = settings.validate_api().unwrap_err();
        assert!(
            err.to_string().contains("CODERUN__AUTH__JWT_SECRET"),
            "{err}"
        );
        let mut placeholder = deployed();
        placeholder.push((
            "auth.jwt_secret",
            "CHANGE-ME-TO-AT-LEAST-32-RANDOM-CHARACTERS".into(),
        ));
        let err = Settings::with_overrides(placeholder)
            .unwrap()
            .validate_api()
            .unwrap_err();
        assert!(err.to_string().contains("CHANGE-ME"), "{err}");
    }

    #[test]
    fn delays_read_with_their_units_and_refuse_anything_else() {
        use std::time::Duration;
        assert_eq!(
            super::parse_delays("5s 5m, 2h 100ms").unwrap(),
            [
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(7200),
                Duration::from_millis(100),
            ]
        );
        assert!(super::parse_delays("").unwrap().is_empty());
        for bad in ["5", "5d", "s", "-5s", "5 s"] {
            assert!(super::parse_delays(bad).is_err(), "{bad}");
        }
        let defaults = Settings::with_overrides(local()).unwrap();
        assert_eq!(defaults.webhooks.retry_schedule.len(), 7);
    }

    #[test]
    fn the_development_s3_secret_is_refused_outside_the_local_stack() {
        for secret in [DEV_S3_SECRET, "CHANGE-ME"] {
            let err = Settings::with_overrides([
                ("local_stack", "false".to_string()),
                ("storage.secret_key", secret.to_string()),
                ("auth.jwt_secret", "x".repeat(40)),
            ])
            .unwrap_err();
            assert!(
                err.to_string().contains("CODERUN__STORAGE__SECRET_KEY"),
                "{err}"
            );
        }
        // The local stack keeps its built-in secrets.
        assert!(Settings::with_overrides(local()).is_ok());
    }

    #[test]
    fn a_worker_starts_without_any_jwt_secret() {
        // The worker only calls `validate`: the development JWT secret (or none at all) is no
        // reason for it to refuse, because it never reads the secret.
        let settings = Settings::with_overrides(deployed()).unwrap();
        assert!(settings.validate().is_ok());
        let mut with_real = deployed();
        with_real.push(("auth.jwt_secret", "r".repeat(40)));
        assert!(
            Settings::with_overrides(with_real)
                .unwrap()
                .validate_api()
                .is_ok()
        );
    }

    #[test]
    fn a_short_secret_is_refused() {
        let mut overrides = local();
        overrides.push(("auth.jwt_secret", "short".to_string()));
        let err = Settings::with_overrides(overrides)
            .unwrap()
            .validate_api()
            .unwrap_err();
        assert!(err.to_string().contains("32 characters"), "{err}");
    }

    #[test]
    fn login_limits_must_be_positive() {
        let mut overrides = local();
        overrides.push(("login.lockout_base_seconds", "0".into()));
        assert!(Settings::with_overrides(overrides).is_err());
        let mut overrides = local();
        overrides.push(("login.hash_memory_percent", "0".into()));
        assert!(Settings::with_overrides(overrides).is_err());
    }

    #[test]
    fn an_unknown_default_spec_is_refused() {
        let mut overrides = local();
        overrides.push(("run.default_spec", "huge".into()));
        assert!(Settings::with_overrides(overrides).is_err());
    }

    #[test]
    fn default_commands_name_the_main_file_quoted_for_the_shell() {
        let settings = Settings::with_overrides(local()).unwrap();
        let python = &settings.languages["python"];
        assert_eq!(python.command_for("main.py"), "python3 -u main.py");
        assert_eq!(
            python.command_for("src/a b.py"),
            "python3 -u './src/a b.py'"
        );
        assert_eq!(python.command_for("it's.py"), "python3 -u './it'\\''s.py'");
        assert_eq!(python.command_for("-x.py"), "python3 -u './-x.py'");
    }

    #[test]
    fn jvm_commands_run_the_main_files_class() {
        let settings = Settings::with_overrides(local()).unwrap();
        let java = &settings.languages["java"];
        assert!(
            java.command_for("Main.java")
                .ends_with("java -cp /tmp/classes Main")
        );
        assert!(
            java.command_for("src/app/Hello.java")
                .ends_with("java -cp /tmp/classes Hello")
        );
        // A name no class can have (nor the shell should see) falls back to `Main`.
        assert!(
            java.command_for("a;rm -rf.java")
                .ends_with("/tmp/classes Main")
        );
        let scala = &settings.languages["scala"];
        assert!(
            scala
                .command_for("Main.scala")
                .ends_with("scala -cp /tmp/classes Main")
        );
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let settings = Settings::with_overrides(local()).unwrap();
        let printed = format!("{settings:?}");
        assert!(!printed.contains(DEV_JWT_SECRET));
        assert!(!printed.contains("coderun-secret"));
    }
}
