//! The worker's command line. `coderun-worker` (or `coderun-worker run`) runs the worker;
//! `coderun-worker print-job [--run-id ID]` prints, as YAML, the Kubernetes Job a run would get
//! — a stored run's with real presigned URLs, or a sample run's with placeholders — so an
//! operator can read or `kubectl apply --dry-run=server -f -` exactly what the executor creates.

use clap::{Parser, Subcommand};
use coderun_shared::config::Settings;
use coderun_shared::{db, runs, storage::Storage};
use uuid::Uuid;

use crate::executor::kubernetes::{self, job, presign::Presigner};

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
        /// A stored run; without it, a sample run.
        #[arg(long)]
        run_id: Option<Uuid>,
    },
}

/// The YAML of the Job `run_id` (or the sample run) would get.
pub async fn print_job(settings: &Settings, run_id: Option<Uuid>) -> anyhow::Result<String> {
    let (run, urls) = match run_id {
        None => {
            let run = job::sample_run();
            let urls = job::sample_urls(&run);
            (run, urls)
        }
        Some(id) => {
            let pool = db::connect(&settings.database).await?;
            let run = runs::get(&pool, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("run {id} does not exist"))?;
            let urls = kubernetes::job_urls(
                &Presigner::new(&settings.storage),
                &Storage::new(&settings.storage),
                &settings.kubernetes,
                &settings.limits,
                &run,
            )
            .await?;
            (run, urls)
        }
    };
    let job = job::build(&run, &settings.kubernetes, &urls);
    Ok(serde_saphyr::to_string(&job)?)
}
