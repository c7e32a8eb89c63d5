//! The worker's command line. `coderun-worker` (or `coderun-worker run`) runs the worker;
//! `coderun-worker print-job [--run-id ID]` prints, as YAML, the Kubernetes Jobs runs would get
//! — a stored run's with real presigned URLs, or, without a run, one Job for each configured
//! spec with placeholder URLs — so an operator (and `infra/validate.sh`) can read or
//! `kubectl apply --dry-run=server -f -` exactly what the executor creates with these settings.

use chrono::Utc;
use clap::{Parser, Subcommand};
use coderun_shared::config::{LanguageSettings, Settings, Spec};
use coderun_shared::runs::{Run, RunSpec, RunStatus};
use coderun_shared::{db, runs};
use uuid::Uuid;

use crate::executor::kubernetes::{self, job, job::JobUrls, presign::Presigner};

#[derive(Debug, Parser)]
#[command(name = "coderun-worker", version, about = "The coderun worker")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the runs stream and execute runs (the default).
    Run,
    /// Print, as YAML, the Kubernetes Job a run would get.
    PrintJob {
        /// A stored run; without it, one Job for each configured spec (YAML documents).
        #[arg(long)]
        run_id: Option<Uuid>,
    },
}

/// The YAML of the Job `run_id` would get, or, without one, of a Job for each configured spec
/// (one YAML document each).
pub async fn print_job(settings: &Settings, run_id: Option<Uuid>) -> anyhow::Result<String> {
    let Some(id) = run_id else {
        let mut out = String::new();
        for run in preview_runs(settings)? {
            let job = job::build(&run, &settings.kubernetes, &placeholder_urls(&run));
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(&job)?);
        }
        return Ok(out);
    };
    let pool = db::connect(&settings.database).await?;
    let run = runs::get(&pool, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("run {id} does not exist"))?;
    let mounts: Vec<_> = coderun_shared::datasets::mounts(&pool, &run.datasets)
        .await?
        .into_iter()
        .map(|m| m.map_err(|r| anyhow::anyhow!("dataset version `{r}` no longer exists")))
        .collect::<anyhow::Result<_>>()?;
    let urls = kubernetes::job_urls(
        &Presigner::new(&settings.storage),
        &settings.kubernetes,
        &run,
        &mounts,
    )
    .await?;
    let job = job::build(&run, &settings.kubernetes, &urls);
    Ok(serde_saphyr::to_string(&job)?)
}

/// A queued run of each configured spec, in the first configured language, as a submission
/// with every default would make it: what the executor would turn into a Job.
fn preview_runs(settings: &Settings) -> anyhow::Result<Vec<Run>> {
    let (language, language_settings) = settings
        .languages
        .iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no language is configured"))?;
    Ok(settings
        .specs
        .iter()
        .enumerate()
        .map(|(i, (name, spec))| {
            preview_run(i as u128 + 1, language, language_settings, name, spec)
        })
        .collect())
}

fn preview_run(
    n: u128,
    language: &str,
    settings: &LanguageSettings,
    spec_name: &str,
    spec: &Spec,
) -> Run {
    let now = Utc::now();
    let id = Uuid::from_u128(n);
    Run {
        id,
        task_id: Uuid::nil(),
        owner_id: Uuid::nil(),
        status: RunStatus::Queued,
        reason: None,
        exit_code: None,
        command: settings.command_for(&settings.main_file),
        language: language.to_owned(),
        image: settings.image.clone(),
        spec: sqlx::types::Json(RunSpec {
            name: spec_name.to_owned(),
            limits: spec.clone(),
        }),
        datasets: Vec::new(),
        remarks: String::new(),
        snapshot_of: id,
        code_sha256: "0".repeat(64),
        retry_of: None,
        worker: None,
        executor: None,
        log_bytes: None,
        log_truncated: false,
        attempt: 1,
        created_at: now,
        queued_at: now,
        dispatched_at: None,
        started_at: None,
        finished_at: None,
        purged_at: None,
        pipeline_run_id: None,
        pipeline_step: None,
    }
}

/// Placeholder URLs where a real Job carries presigned ones: nothing is signed or reached.
fn placeholder_urls(run: &Run) -> JobUrls {
    let base = "https://storage.invalid/coderun";
    JobUrls {
        code: format!("{base}/{}?X-Amz-Signature=…", run.code_key()),
        outputs: format!(
            "{base}/{}?X-Amz-Signature=…",
            run.objects().outputs_archive()
        ),
        datasets: Vec::new(),
        dataset_volumes: Vec::new(),
        step: None,
    }
}
