//! Submit: a task's files become a queued run. The request is checked first (command, remarks,
//! spec, datasets), then the steps run in their one order: authorise (with the read of the
//! files the snapshot is made of), replay an earlier run of the same `Idempotency-Key`, check
//! the datasets, check the room and commit (storing the snapshot first when the bucket does
//! not hold it), enqueue.

use std::collections::HashSet;

use uuid::Uuid;

use super::access::{self, Access, Actor};
use super::{Accepted, Error, Lifecycle, idempotency};
use crate::config::Settings;
use crate::domain::Command;
use crate::runs::{NewRun, RunSpec};
use crate::tasks::Task;

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
        // Authorise and read the files for the snapshot in one query; the bundle is hashed
        // as they arrive (a stranger's task is not read further).
        let (task, hashed) = crate::snapshots::read_task(self.db, task_id, |task: &Task| {
            access::task_rule(actor, task.owner_id, Access::Write).is_ok()
        })
        .await?
        .ok_or(Error::NotFound("task"))?;
        let Some(hashed) = hashed else {
            return Err(access::task_rule(actor, task.owner_id, Access::Write)
                .err()
                .unwrap_or(Error::NotFound("task")));
        };
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
                events: Vec::new(),
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
        // The room and the quota are checked by the commit, under the owner's lock, before
        // anything is stored. The id is time-ordered (UUIDv7): the runs' primary key and their
        // events' index then grow at their right edge instead of touching a random leaf per
        // insert, which after every checkpoint cost a full-page image each.
        let run_id = Uuid::now_v7();
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
        let adding = task.total_size.max(0) as u64;
        let admitted = self.snapshot_and_commit(new, hashed, adding).await?;
        let run = admitted.run;
        self.enqueue(&run).await;
        tracing::info!(run_id = %run.id, task_id = %task.id, spec = %run.spec.name, "run submitted");
        Ok(Accepted {
            run,
            replayed: false,
            events: vec![admitted.event],
        })
    }
}
