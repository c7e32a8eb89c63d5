//! The Job a run gets: one pure function from the run, the settings and the presigned URLs to
//! a typed `batch/v1` Job, snapshot-tested.
//!
//! The rule it keeps: the pod gets nothing it was not given. No credential of any
//! kind — code, datasets and outputs move through presigned URLs of single objects — no
//! service-account token, no service links, the Pod Security "restricted" profile, requests =
//! limits from the run's spec, `emptyDir`s with a `sizeLimit` for everything writable, and a
//! read-only root file system.

use std::collections::BTreeMap;

use coderun_shared::config::KubernetesSettings;
use coderun_shared::runs::Run;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, LocalObjectReference,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use uuid::Uuid;

use crate::executor::environment::RunEnvironment;

/// Every object coderun creates carries this label; the watchers select on it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "coderun");
pub const RUN_ID: &str = "coderun.dev/run-id";
pub const TASK_ID: &str = "coderun.dev/task-id";
pub const USER_ID: &str = "coderun.dev/user-id";
/// The label selector of coderun's Jobs and their Pods.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=coderun";

/// The program's container; its exit is the run's.
pub const MAIN: &str = "main";
/// The init container fetching code and datasets.
pub const FETCH: &str = "fetch";
/// The native sidecar uploading `$OUTPUT_DIR` once the program has ended.
pub const OUTPUTS: &str = "outputs";

pub use crate::executor::environment::{CODE_PATH, DATA_DIR, INPUT_DIR, OUTPUT_DIR};

/// The unprivileged uid and gid everything in the pod runs as (`nobody`).
const NOBODY: i64 = 65534;

/// The presigned URLs a Job carries: no credential, each good for one object only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUrls {
    /// GET of the run's code snapshot, `snapshots/{sha256}.tar.gz`.
    pub code: String,
    /// PUT of `runs/{id}/outputs.tar.gz`.
    pub outputs: String,
    pub datasets: Vec<DatasetFile>,
    /// Dataset versions mounted from a prepared ReadOnlyMany volume instead
    /// (`kubernetes.dataset_source = "volume"`).
    pub dataset_volumes: Vec<DatasetVolume>,
    /// A pipeline step's part: `None` for a run of no pipeline.
    pub step: Option<StepUrls>,
}

/// What a pipeline step's Job carries beyond a run's: its `PARAM_<NAME>` variables and the
/// earlier steps' output files, fetched by the init container into `$INPUT_DIR/{step}/{path}`
/// and mounted read-only into the program's container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepUrls {
    pub env: Vec<(String, String)>,
    pub inputs: Vec<InputFile>,
}

/// One output file of an earlier step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// `{step}/{path in its $OUTPUT_DIR}`, both already validated.
    pub path: String,
    pub url: String,
    pub size: u64,
}

/// One object of a dataset, fetched into `$DATA_DIR/{path}` and checked against its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetFile {
    /// `{dataset}/{path inside it}`, already validated as a safe relative path.
    pub path: String,
    pub url: String,
    pub size: u64,
    /// Lowercase hex; the init container refuses a file that does not match it.
    pub sha256: String,
}

/// A dataset version on a prepared PersistentVolumeClaim, mounted read-only at
/// `$DATA_DIR/{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetVolume {
    /// The dataset's name (a safe folder name).
    pub name: String,
    /// The claim holding the version's files at its root.
    pub claim: String,
}

/// `run-<uuid>`: 40 characters, a DNS-1123 label, and the same for every attempt to launch
/// the run, so a second create answers 409: one execution per run attempt.
pub fn job_name(run: Uuid) -> String {
    format!("run-{run}")
}

/// The run a Job or Pod belongs to, from its label.
pub fn run_of(meta: &ObjectMeta) -> Option<Uuid> {
    meta.labels.as_ref()?.get(RUN_ID)?.parse().ok()
}

/// Downloads and checks the code bundle, unpacks it, then fetches each dataset object and
/// checks it against its sha256 (path, URL and sha256 are argument triples), makes the
/// mount points of volume-mounted datasets (`DATA_VOLUMES`), and for a pipeline step fetches
/// the earlier steps' outputs (after a `--inputs` marker, path and URL pairs; a dataset path
/// always holds a `/`, so it is never the marker). `set -eu`: any failure — a checksum that
/// does not match too — fails the pod before the program ever starts.
const FETCH_SCRIPT: &str = r#"set -eu
bundle="$CODE_PATH/.coderun-code.tar.gz"
curl -fsS --retry 3 -o "$bundle" "$CODE_URL"
echo "$CODE_SHA256  $bundle" | sha256sum -c - >/dev/null
tar -xzf "$bundle" -C "$CODE_PATH"
rm -f "$bundle"
while [ "$#" -ge 3 ] && [ "$1" != "--inputs" ]; do
  mkdir -p "$(dirname "$DATA_DIR/$1")"
  curl -fsS --retry 3 -o "$DATA_DIR/$1" "$2"
  echo "$3  $DATA_DIR/$1" | sha256sum -c - >/dev/null
  shift 3
done
for name in ${DATA_VOLUMES:-}; do mkdir -p "$DATA_DIR/$name"; done
if [ "${1:-}" = "--inputs" ]; then
  shift
  while [ "$#" -ge 2 ]; do
    mkdir -p "$(dirname "$INPUT_DIR/$1")"
    curl -fsS --retry 3 -o "$INPUT_DIR/$1" "$2"
    shift 2
  done
fi
"#;

/// Waits for the program to end — the kubelet sends SIGTERM to a native sidecar once the main
/// container has exited — then uploads `$OUTPUT_DIR` as one archive. The archive goes to a
/// file first: S3 wants a Content-Length, which a piped upload would not have.
const OUTPUTS_SCRIPT: &str = r#"upload() {
  tar -czf /upload/outputs.tar.gz -C "$OUTPUT_DIR" . &&
    curl -fsS --retry 3 -T /upload/outputs.tar.gz "$OUTPUTS_URL" ||
    echo "coderun: the outputs could not be uploaded" >&2
  exit 0
}
trap upload TERM INT
while :; do sleep 3600 & wait $!; done
"#;

/// The Job for `run`. Pure: the same inputs give the same Job.
pub fn build(run: &Run, settings: &KubernetesSettings, urls: &JobUrls) -> Job {
    let limits = &run.spec.limits;
    let name = job_name(run.id);
    let labels = labels(run);
    let disk = mebibytes(limits.disk_mib);
    let data_mib = urls
        .datasets
        .iter()
        .map(|f| f.size)
        .sum::<u64>()
        .div_ceil(1024 * 1024)
        + 1;

    let env = |pairs: &[(&str, &str)]| -> Option<Vec<EnvVar>> {
        Some(
            pairs
                .iter()
                .map(|(name, value)| EnvVar {
                    name: (*name).to_owned(),
                    value: Some((*value).to_owned()),
                    value_from: None,
                })
                .collect(),
        )
    };
    let mount = |volume: &str, path: &str, read_only: bool| VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let helper_resources = resources("100m", "64Mi", "16Mi");

    let mut fetch_args = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        FETCH_SCRIPT.to_owned(),
        FETCH.to_owned(),
    ];
    for file in &urls.datasets {
        fetch_args.push(file.path.clone());
        fetch_args.push(file.url.clone());
        fetch_args.push(file.sha256.clone());
    }
    if let Some(step) = &urls.step {
        fetch_args.push("--inputs".to_owned());
        for file in &step.inputs {
            fetch_args.push(file.path.clone());
            fetch_args.push(file.url.clone());
        }
    }
    let input_mib = urls.step.as_ref().map(|step| {
        step.inputs
            .iter()
            .map(|f| f.size)
            .sum::<u64>()
            .div_ceil(1024 * 1024)
            + 1
    });
    let data_volumes = urls
        .dataset_volumes
        .iter()
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let mut fetch_env = vec![
        ("CODE_URL", urls.code.as_str()),
        ("CODE_SHA256", run.code_sha256.as_str()),
        ("CODE_PATH", CODE_PATH),
        ("DATA_DIR", DATA_DIR),
    ];
    if !data_volumes.is_empty() {
        fetch_env.push(("DATA_VOLUMES", &data_volumes));
    }
    if urls.step.is_some() {
        fetch_env.push(("INPUT_DIR", INPUT_DIR));
    }
    let fetch = Container {
        name: FETCH.to_owned(),
        image: Some(settings.init_image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(fetch_args),
        env: env(&fetch_env),
        volume_mounts: Some(
            [
                mount("code", CODE_PATH, false),
                mount("data", DATA_DIR, false),
            ]
            .into_iter()
            .chain(urls.step.as_ref().map(|_| mount("input", INPUT_DIR, false)))
            .collect(),
        ),
        resources: Some(helper_resources.clone()),
        security_context: Some(container_security()),
        ..Container::default()
    };
    let outputs = Container {
        name: OUTPUTS.to_owned(),
        image: Some(settings.init_image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        // A native sidecar (Kubernetes ≥ 1.29): it runs beside the program and is terminated
        // after it, without holding the pod open.
        restart_policy: Some("Always".to_owned()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            OUTPUTS_SCRIPT.to_owned(),
        ]),
        env: env(&[("OUTPUTS_URL", &urls.outputs), ("OUTPUT_DIR", OUTPUT_DIR)]),
        volume_mounts: Some(vec![
            mount("output", OUTPUT_DIR, true),
            mount("upload", "/upload", false),
        ]),
        // Room to archive `$OUTPUT_DIR` (at most the spec's disk) next to it.
        resources: Some(ResourceRequirements {
            limits: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), Quantity("64Mi".to_owned())),
                ("ephemeral-storage".to_owned(), disk.clone()),
            ])),
            ..helper_resources.clone()
        }),
        security_context: Some(container_security()),
        ..Container::default()
    };
    let main = Container {
        name: MAIN.to_owned(),
        image: Some(run.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec!["sh".to_owned(), "-c".to_owned(), run.command.clone()]),
        working_dir: Some(CODE_PATH.to_owned()),
        env: env(&RunEnvironment::new(run.id, run.attempt)
            .vars()
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .chain([("HOME", "/tmp"), ("TMPDIR", "/tmp")])
            .chain(
                urls.step
                    .iter()
                    .flat_map(|step| step.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .chain(urls.step.as_ref().map(|_| ("INPUT_DIR", INPUT_DIR))),
            )
            .collect::<Vec<_>>()),
        volume_mounts: Some(
            [
                mount("code", CODE_PATH, false),
                mount("output", OUTPUT_DIR, false),
                mount("data", DATA_DIR, true),
                mount("tmp", "/tmp", false),
            ]
            .into_iter()
            .chain(urls.dataset_volumes.iter().enumerate().map(|(i, v)| {
                mount(
                    &format!("dataset-{i}"),
                    &format!("{DATA_DIR}/{}", v.name),
                    true,
                )
            }))
            .chain(urls.step.as_ref().map(|_| mount("input", INPUT_DIR, true)))
            .collect(),
        ),
        resources: Some(resources(
            &format!("{}m", limits.cpu_millis),
            &format!("{}Mi", limits.memory_mib),
            &format!(
                "{}Mi",
                u64::from(limits.disk_mib) + data_mib + input_mib.unwrap_or(0)
            ),
        )),
        security_context: Some(container_security()),
        ..Container::default()
    };

    let empty_dir = |name: &str, size: Quantity| Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(size),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    };
    let pod = PodSpec {
        restart_policy: Some("Never".to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        service_account_name: (!settings.service_account.is_empty())
            .then(|| settings.service_account.clone()),
        image_pull_secrets: (!settings.image_pull_secrets.is_empty()).then(|| {
            settings
                .image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        }),
        termination_grace_period_seconds: Some(i64::from(settings.termination_grace_seconds)),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NOBODY),
            run_as_group: Some(NOBODY),
            fs_group: Some(NOBODY),
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
        init_containers: Some(vec![fetch, outputs]),
        containers: vec![main],
        volumes: Some(
            [
                empty_dir("code", disk.clone()),
                empty_dir("output", disk.clone()),
                empty_dir("upload", disk.clone()),
                empty_dir("tmp", disk),
                empty_dir("data", Quantity(format!("{data_mib}Mi"))),
            ]
            .into_iter()
            .chain(input_mib.map(|mib| empty_dir("input", Quantity(format!("{mib}Mi")))))
            .chain(
                urls.dataset_volumes
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Volume {
                        name: format!("dataset-{i}"),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: v.claim.clone(),
                            read_only: Some(true),
                        }),
                        ..Volume::default()
                    }),
            )
            .collect(),
        ),
        ..PodSpec::default()
    };

    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(i64::from(limits.wall_seconds)),
            ttl_seconds_after_finished: Some(settings.ttl_seconds_after_finished as i32),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

fn labels(run: &Run) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (RUN_ID.to_owned(), run.id.to_string()),
        (TASK_ID.to_owned(), run.task_id.to_string()),
        (USER_ID.to_owned(), run.owner_id.to_string()),
    ])
}

fn mebibytes(mib: u32) -> Quantity {
    Quantity(format!("{mib}Mi"))
}

/// Requests equal to limits: the pod is `Guaranteed` and gets exactly its spec.
fn resources(cpu: &str, memory: &str, disk: &str) -> ResourceRequirements {
    let amounts = BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
        ("ephemeral-storage".to_owned(), Quantity(disk.to_owned())),
    ]);
    ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..ResourceRequirements::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// Pod Security "restricted", per container.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(NOBODY),
        run_as_group: Some(NOBODY),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// A fixed run for `print-job` without `--run-id` and for the snapshot test.
pub fn sample_run() -> Run {
    use chrono::{TimeZone, Utc};
    use coderun_shared::config::Spec;
    use coderun_shared::runs::{RunSpec, RunStatus};
    use sqlx::types::Json;

    let at = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
    let id = Uuid::from_u128(0x0192_5e2a_7b7c_7d3e_8f00_1234_5678_9abc);
    Run {
        id,
        task_id: Uuid::from_u128(0x0192_5e2a_0000_7000_8000_0000_0000_0001),
        owner_id: Uuid::from_u128(0x0192_5e2a_0000_7000_8000_0000_0000_0002),
        status: RunStatus::Queued,
        reason: None,
        exit_code: None,
        command: "python3 -u main.py".to_owned(),
        language: "python".to_owned(),
        image: "python:3.12-slim".to_owned(),
        spec: Json(RunSpec {
            name: "small".to_owned(),
            limits: Spec {
                description: "0.5 cpu, 256 MiB, 30 s".to_owned(),
                cpu_millis: 500,
                memory_mib: 256,
                disk_mib: 256,
                pids: 64,
                wall_seconds: 30,
            },
        }),
        datasets: vec!["iris@v1".to_owned()],
        remarks: String::new(),
        snapshot_of: id,
        code_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        retry_of: None,
        worker: None,
        executor: None,
        log_bytes: None,
        log_truncated: false,
        attempt: 1,
        created_at: at,
        queued_at: at,
        dispatched_at: None,
        started_at: None,
        finished_at: None,
        purged_at: None,
        pipeline_run_id: None,
        pipeline_step: None,
    }
}

/// Placeholder URLs for the sample run: what a Job looks like without touching storage.
pub fn sample_urls(run: &Run) -> JobUrls {
    let base = "https://storage.invalid/coderun";
    JobUrls {
        code: format!("{base}/{}?X-Amz-Signature=…", run.code_key()),
        outputs: format!(
            "{base}/{}?X-Amz-Signature=…",
            run.objects().outputs_archive()
        ),
        datasets: run
            .datasets
            .iter()
            .map(|pinned| {
                let (name, version) = pinned.split_once('@').unwrap_or((pinned, "v1"));
                DatasetFile {
                    path: format!("{name}/iris.csv"),
                    url: format!("{base}/datasets/{name}/{version}/iris.csv?X-Amz-Signature=…"),
                    size: 4551,
                    sha256: "1d7a6f0c6a1e0ad9b4b5f0c0e4a2b1d3c0d6e8f2a4b6c8d0e2f4a6b8c0d2e4f6"
                        .to_owned(),
                }
            })
            .collect(),
        dataset_volumes: Vec::new(),
        step: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coderun_shared::config::Settings;

    fn settings() -> KubernetesSettings {
        Settings::with_overrides([("local_stack", "true".to_owned())])
            .unwrap()
            .kubernetes
    }

    fn sample_job() -> Job {
        let run = sample_run();
        build(&run, &settings(), &sample_urls(&run))
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn all_containers(job: &Job) -> Vec<&Container> {
        let pod = pod(job);
        pod.init_containers
            .iter()
            .flatten()
            .chain(pod.containers.iter())
            .collect()
    }

    /// RFC 1123 label: lower-case alphanumerics and '-', alphanumeric at both ends, ≤ 63.
    fn is_dns1123_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    }

    /// A label value: ≤ 63 characters of alphanumerics, '-', '_', '.', alphanumeric at the ends.
    fn is_label_value(s: &str) -> bool {
        s.is_empty()
            || (s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
    }

    #[test]
    fn the_job_of_the_sample_run_matches_its_snapshot() {
        insta::assert_yaml_snapshot!(sample_job());
    }

    #[test]
    fn job_names_are_dns_labels_within_63_characters_with_room_for_the_pod_suffix() {
        for _ in 0..100 {
            let name = job_name(Uuid::new_v4());
            assert!(is_dns1123_label(&name), "{name}");
            // The job controller names pods `<job>-<5 characters>`.
            assert!(name.len() + 6 <= 63, "{name}");
        }
        assert_eq!(sample_job().metadata.name.unwrap().len(), 40);
    }

    #[test]
    fn labels_are_valid_and_name_the_run_task_and_user() {
        let run = sample_run();
        let job = sample_job();
        let labels = job.metadata.labels.as_ref().unwrap();
        for (key, value) in labels {
            assert!(is_label_value(value), "{key}={value}");
        }
        assert_eq!(labels[RUN_ID], run.id.to_string());
        assert_eq!(labels[TASK_ID], run.task_id.to_string());
        assert_eq!(labels[USER_ID], run.owner_id.to_string());
        assert_eq!(labels[MANAGED_BY.0], MANAGED_BY.1);
        let template = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        assert_eq!(template.labels.as_ref(), Some(labels));
        assert_eq!(run_of(&job.metadata), Some(run.id));
    }

    #[test]
    fn the_job_fails_at_once_runs_within_its_wall_time_and_is_cleaned_up() {
        let job = sample_job();
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(30));
        assert_eq!(spec.ttl_seconds_after_finished, Some(600));
        assert_eq!(pod(&job).restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn the_main_container_gets_exactly_the_spec_and_the_run_environment() {
        let run = sample_run();
        let job = sample_job();
        let main = &pod(&job).containers[0];
        assert_eq!(main.name, MAIN);
        assert_eq!(main.image.as_deref(), Some("python:3.12-slim"));
        assert_eq!(
            main.command.as_deref(),
            Some(&["sh".to_owned(), "-c".to_owned(), run.command.clone()][..])
        );
        assert_eq!(main.working_dir.as_deref(), Some(CODE_PATH));
        let resources = main.resources.as_ref().unwrap();
        assert_eq!(resources.requests, resources.limits);
        let limits = resources.limits.as_ref().unwrap();
        assert_eq!(limits["cpu"].0, "500m");
        assert_eq!(limits["memory"].0, "256Mi");
        // The disk of the spec plus room for the datasets (1 MiB here).
        assert_eq!(limits["ephemeral-storage"].0, "258Mi");
        let env: BTreeMap<_, _> = main
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(env["CODE_PATH"], CODE_PATH);
        assert_eq!(env["OUTPUT_DIR"], OUTPUT_DIR);
        assert_eq!(env["DATA_DIR"], DATA_DIR);
        assert_eq!(env["RUN_ID"], run.id.to_string());
        let data = main
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == DATA_DIR)
            .unwrap();
        assert_eq!(data.read_only, Some(true), "datasets are read-only");
    }

    #[test]
    fn every_writable_volume_is_a_size_limited_empty_dir() {
        let job = sample_job();
        let volumes = pod(&job).volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 5);
        for volume in volumes {
            let dir = volume
                .empty_dir
                .as_ref()
                .unwrap_or_else(|| panic!("{volume:?}"));
            assert!(dir.size_limit.is_some(), "{}", volume.name);
        }
        let size = |name: &str| {
            volumes
                .iter()
                .find(|v| v.name == name)
                .unwrap()
                .empty_dir
                .as_ref()
                .unwrap()
                .size_limit
                .as_ref()
                .unwrap()
                .0
                .clone()
        };
        assert_eq!(size("code"), "256Mi");
        assert_eq!(size("output"), "256Mi");
        assert_eq!(size("tmp"), "256Mi");
    }

    #[test]
    fn the_pod_follows_the_restricted_pod_security_profile() {
        let job = sample_job();
        let pod = pod(&job);
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        assert_ne!(pod.host_network, Some(true));
        assert_ne!(pod.host_pid, Some(true));
        assert_ne!(pod.host_ipc, Some(true));
        let security = pod.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(65534));
        assert_eq!(
            security.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        for container in all_containers(&job) {
            let security = container.security_context.as_ref().unwrap();
            assert_eq!(
                security.allow_privilege_escalation,
                Some(false),
                "{}",
                container.name
            );
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.run_as_non_root, Some(true));
            assert_eq!(security.run_as_user, Some(65534));
            assert_eq!(security.privileged, Some(false));
            let capabilities = security.capabilities.as_ref().unwrap();
            assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
            assert!(capabilities.add.is_none());
            assert_eq!(
                security.seccomp_profile.as_ref().unwrap().type_,
                "RuntimeDefault"
            );
            assert!(container.resources.as_ref().unwrap().limits.is_some());
        }
    }

    #[test]
    fn the_job_carries_no_credential_of_any_kind() {
        let storage = Settings::with_overrides([("local_stack", "true".to_owned())])
            .unwrap()
            .storage;
        let job = sample_job();
        for container in all_containers(&job) {
            assert!(container.env_from.is_none(), "{}", container.name);
            for var in container.env.iter().flatten() {
                assert!(
                    var.value_from.is_none(),
                    "{} takes {:?}",
                    container.name,
                    var.name
                );
            }
        }
        let pod = pod(&job);
        for volume in pod.volumes.iter().flatten() {
            assert!(
                volume.secret.is_none() && volume.projected.is_none(),
                "{}",
                volume.name
            );
        }
        // (A presigned URL names its access key id, which is not a secret; the secret key never
        // leaves the worker.)
        let serialized = serde_json::to_string(&job).unwrap();
        for needle in [
            "secretKeyRef",
            "envFrom",
            "serviceAccountToken",
            "AWS_",
            "SECRET",
            secrecy::ExposeSecret::expose_secret(&storage.secret_key),
        ] {
            assert!(!serialized.contains(needle), "the Job contains {needle:?}");
        }
    }

    #[test]
    fn the_outputs_leave_through_a_native_sidecar_with_a_presigned_url() {
        let run = sample_run();
        let urls = sample_urls(&run);
        let job = build(&run, &settings(), &urls);
        let init = pod(&job).init_containers.as_ref().unwrap();
        assert_eq!(init[0].name, FETCH);
        assert_eq!(init[0].restart_policy, None);
        assert_eq!(init[1].name, OUTPUTS);
        assert_eq!(init[1].restart_policy.as_deref(), Some("Always"));
        let outputs_url = init[1]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "OUTPUTS_URL")
            .unwrap();
        assert_eq!(outputs_url.value.as_deref(), Some(urls.outputs.as_str()));
        let output = init[1]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == OUTPUT_DIR)
            .unwrap();
        assert_eq!(output.read_only, Some(true));
        // Dataset objects are fetched by path, presigned URL and sha256 triples, each checked.
        let args = init[0].command.as_ref().unwrap();
        assert_eq!(
            &args[args.len() - 3..],
            &[
                urls.datasets[0].path.clone(),
                urls.datasets[0].url.clone(),
                urls.datasets[0].sha256.clone()
            ]
        );
        assert!(args[2].contains(r#"echo "$3  $DATA_DIR/$1" | sha256sum -c -"#));
    }

    #[test]
    fn a_dataset_on_a_prepared_volume_is_mounted_read_only_instead_of_fetched() {
        let run = sample_run();
        let mut urls = sample_urls(&run);
        urls.datasets.clear();
        urls.dataset_volumes = vec![DatasetVolume {
            name: "iris".into(),
            claim: "coderun-dataset-iris-v1".into(),
        }];
        let job = build(&run, &settings(), &urls);
        let pod = pod(&job);
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "dataset-0")
            .unwrap();
        let claim = volume.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(claim.claim_name, "coderun-dataset-iris-v1");
        assert_eq!(claim.read_only, Some(true));
        let mount = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "dataset-0")
            .unwrap();
        assert_eq!(mount.mount_path, format!("{DATA_DIR}/iris"));
        assert_eq!(mount.read_only, Some(true));
        let fetch = &pod.init_containers.as_ref().unwrap()[0];
        let env = fetch.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "DATA_VOLUMES" && e.value.as_deref() == Some("iris"))
        );
        assert_eq!(fetch.command.as_ref().unwrap().len(), 4, "nothing to fetch");
    }
}
