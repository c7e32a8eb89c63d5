//! Submit: a task's files become a queued run. The request is checked first (command, remarks,
//! spec, datasets), then the steps run in their one order: authorise, replay an earlier run of
//! the same `Idempotency-Key`, check the datasets and the room, snapshot, commit, enqueue.

use std::collections::HashSet;

use uuid::Uuid;

use super::access::{self, Access, Actor};
use super::{Accepted, Error, Lifecycle, idempotency};
use crate::config::Settings;
use crate::domain::Command;
use crate::runs::{NewRun, RunSpec};

/// A submission names at most this many datasets.
pub const MAX_DATASETS: usize = 8;
/// Remarks are at most this many characters.
pub const MAX_REMARKS_CHARS: usize = 2000;

/// What a submit asks for, as the caller sent it; every field has a default.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A shell command run by `sh -c`; by default the task's command, else the language's.
    pub command: Option<String>,
    pub remarks: Option<String>,
    /// A configured spec's name; by default `run.default_spec`.
    pub spec: Option<String>,
    /// Datasets mounted read-only under `$DATA_DIR/{name}`.
    pub datasets: Option<Vec<String>>,
}

/// A submission's values, checked against the settings (not yet against the task or bucket).
#[derive(Debug, Clone)]
pub struct Submission {
    command: Option<Command>,
    remarks: String,
    spec: RunSpec,
    datasets: Vec<String>,
}

impl Submission {
    /// Checks everything that needs neither the task nor the bucket.
    pub fn check(settings: &Settings, body: Request) -> Result<Self, Error> {
        let command = body.command.as_deref().map(Command::parse).transpose()?;
        let remarks = body.remarks.unwrap_or_default();
        if remarks.chars().count() > MAX_REMARKS_CHARS {
            return Err(Error::Invalid(format!(
                "remarks must be at most {MAX_REMARKS_CHARS} characters long"
            )));
        }
        if remarks.contains('\0') {
            return Err(Error::Invalid(
                "remarks must not contain NUL characters".into(),
            ));
        }
        let name = body
            .spec
            .unwrap_or_else(|| settings.run.default_spec.clone());
        let limits = settings.specs.get(&name).ok_or_else(|| {
            let known: Vec<&str> = settings.specs.keys().map(String::as_str).collect();
            Error::Invalid(format!(
                "unknown spec `{name}`; known specs: {}",
                known.join(", ")
            ))
        })?;
        let datasets = body.datasets.unwrap_or_default();
        if datasets.len() > MAX_DATASETS {
            return Err(Error::Invalid(format!(
                "a run mounts at most {MAX_DATASETS} datasets"
            )));
        }
        let mut seen = HashSet::new();
        if let Some(twice) = datasets.iter().find(|d| !seen.insert(d.as_str())) {
            return Err(Error::Invalid(format!("dataset `{twice}` is named twice")));
        }
        Ok(Self {
            command,
            remarks,
            spec: RunSpec {
                name,
                limits: limits.clone(),
            },
            datasets,
        })
    }

    /// What makes two submissions the same request (for `Idempotency-Key`).
    fn fingerprint_parts<'a>(&'a self, task_id: &'a str) -> Vec<&'a str> {
        let mut parts = vec![
            "submit",
            task_id,
            self.command.as_ref().map_or("\0default", |c| c.as_str()),
            &self.remarks,
            &self.spec.name,
        ];
        parts.extend(self.datasets.iter().map(String::as_str));
        parts
    }
}

impl Lifecycle<'_> {
    /// Submits the task's files as a new run, or answers the run an earlier request with the
    /// same `idempotency_key` created. A refusal stores nothing.
    pub async fn submit(
        &self,
        actor: &Actor,
        task_id: Uuid,
        submission: Submission,
        idempotency_key: Option<String>,
    ) -> Result<Accepted, Error> {
        let task = access::task(self.db, actor, task_id, Access::Write).await?;
        let idempotency = idempotency::with_fingerprint(
            idempotency_key,
            &submission.fingerprint_parts(&task_id.to_string()),
        );
        if let Some(run) =
            idempotency::earlier_run(self.db, task.owner_id, idempotency.as_ref()).await?
        {
            return Ok(Accepted {
                run,
                replayed: true,
            });
        }
        let submission = Submission {
            datasets: self.resolve_datasets(&submission.datasets).await?,
            ..submission
        };
        let language = self.settings.languages.get(&task.language).ok_or_else(|| {
            Error::Conflict(format!(
                "the task's language `{}` is no longer offered",
                task.language
            ))
        })?;
        let command = match (submission.command, &task.command) {
            (Some(command), _) => command.as_str().to_owned(),
            (None, Some(command)) => command.clone(),
            (None, None) => {
                language.command_for(task.main_file.as_deref().unwrap_or(&language.main_file))
            }
        };
        self.check_room(task.id, task.owner_id).await?;
        self.check_quota(task.owner_id, task.total_size.max(0) as u64)
            .await?;

        let run_id = Uuid::new_v4();
        let new = NewRun {
            id: run_id,
            task_id: task.id,
            owner_id: task.owner_id,
            command,
            language: task.language.clone(),
            image: language.image.clone(),
            spec: submission.spec,
            datasets: submission.datasets,
            remarks: submission.remarks,
            snapshot_of: run_id,
            // Named by the snapshot step.
            code_sha256: String::new(),
            retry_of: None,
            idempotency,
        };
        let run = self.snapshot_and_commit(new).await?;
        self.enqueue(&run).await;
        tracing::info!(run_id = %run.id, task_id = %task.id, spec = %run.spec.name, "run submitted");
        Ok(Accepted {
            run,
            replayed: false,
        })
    }
}
