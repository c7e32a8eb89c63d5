//! Pipelines: named, versioned definitions of stages of steps, and their runs. Stages run in
//! order, the steps of a stage in parallel; each step is an ordinary run of one of the owner's
//! tasks (same phases, permits, executors), linked to its pipeline run.
//!
//! The rules live here and in Postgres (migration 0007): a definition is checked whole before
//! anything is stored ([`Definition::check`], then the tasks against their owner); a pipeline
//! run resolves every step when it starts (snapshot, command, spec, datasets, merged
//! parameters); advancing is `advance_pipeline_run`, run by a trigger in the transaction that
//! records a step run's terminal status, so the next stage is queued exactly when the stage
//! before it ended, once. Every status change of a pipeline run goes through the SQL function
//! `set_pipeline_run_status` (the transition to `awaiting_approval` is the approval request);
//! callers here enqueue the runs an advance queued after its commit. Nothing here knows HTTP.
//!
//! The shape cannot cycle: a step has no references to other steps, only a place in the
//! ordered stage list, and it sees the outputs of the steps of earlier stages only.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::config::Settings;
use crate::domain::{Command, PageRequest, Role};
use crate::lifecycle::{self, Actor, Lifecycle};
use crate::runs::{RunSpec, RunStatus};
use crate::snapshots;

/// A pipeline has at most this many stages.
pub const MAX_STAGES: usize = 20;
/// A pipeline has at most this many steps, over all its stages.
pub const MAX_STEPS: usize = 100;
/// At most this many parameters in any one `params` object.
pub const MAX_PARAMS: usize = 64;
/// A parameter's value is at most this many bytes.
pub const MAX_PARAM_VALUE_BYTES: usize = 4096;
/// A pipeline's name is 1 to this many characters.
pub const MAX_NAME_CHARS: usize = 100;
/// An approval's comment is at most this many characters.
pub const MAX_COMMENT_CHARS: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such pipeline or pipeline run, or one the actor may not see.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The actor may read it but not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The definition or request breaks a rule; the message names the stage or step.
    #[error("{0}")]
    Invalid(String),
    /// Not possible in the state things are in.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::Error),
    #[error("code snapshot: {0}")]
    Snapshot(#[from] snapshots::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn invalid<T>(message: impl Into<String>) -> Result<T, Error> {
    Err(Error::Invalid(message.into()))
}

/// Parameters by name; names are `[A-Z][A-Z0-9_]*` (they become `PARAM_<NAME>`).
pub type Params = BTreeMap<String, String>;

/// What a pipeline runs: its parameters with their defaults and its ordered stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Parameters with their default values; a pipeline run may set only these.
    #[serde(default)]
    pub params: Params,
    pub stages: Vec<StageDefinition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageDefinition {
    /// Unique in the pipeline; letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// The stage starts only once a teacher or admin approved it.
    #[serde(default)]
    pub approval: bool,
    /// Overrides of the parameters for every step of the stage.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: Params,
    pub steps: Vec<StepDefinition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// Unique in the pipeline and safe as a folder name (`$INPUT_DIR/<name>/` of later steps).
    pub name: String,
    /// One of the pipeline owner's tasks.
    pub task_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Params>,
    /// The pipeline goes on when this step fails.
    #[serde(default)]
    pub allow_failure: bool,
}

/// 1 to 64 characters of letters, digits, `.`, `_`, `-`, starting with a letter or digit: a
/// name that is safe as a folder name everywhere.
pub fn is_safe_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[A-Z][A-Z0-9_]*`, 1 to 64 characters: the `<NAME>` of `PARAM_<NAME>`. Lower case is
/// refused rather than upper-cased, so the name a user writes is the one the program reads.
pub fn is_param_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn check_params(params: &Params, place: &str) -> Result<(), Error> {
    if params.len() > MAX_PARAMS {
        return invalid(format!("{place}: at most {MAX_PARAMS} parameters"));
    }
    for (name, value) in params {
        if !is_param_name(name) {
            return invalid(format!(
                "{place}: parameter name `{name}` is not valid; use upper-case letters, digits \
                 and `_`, starting with a letter (it becomes PARAM_{name})"
            ));
        }
        if value.len() > MAX_PARAM_VALUE_BYTES || value.contains('\0') {
            return invalid(format!(
                "{place}: parameter `{name}` must be at most {MAX_PARAM_VALUE_BYTES} bytes \
                 without NUL characters"
            ));
        }
    }
    Ok(())
}

/// Checks a pipeline's name.
pub fn check_name(name: &str) -> Result<(), Error> {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return invalid(format!(
            "the pipeline's name must be 1 to {MAX_NAME_CHARS} characters, not blank, without \
             control characters"
        ));
    }
    Ok(())
}

impl Definition {
    /// Checks everything that needs no database: the shape, names, commands, specs, datasets
    /// and parameters. The message names the offending stage or step.
    pub fn check(&self, settings: &Settings) -> Result<(), Error> {
        check_params(&self.params, "params")?;
        if self.stages.is_empty() {
            return invalid("a pipeline needs at least one stage");
        }
        if self.stages.len() > MAX_STAGES {
            return invalid(format!("a pipeline has at most {MAX_STAGES} stages"));
        }
        let steps: usize = self.stages.iter().map(|s| s.steps.len()).sum();
        if steps > MAX_STEPS {
            return invalid(format!("a pipeline has at most {MAX_STEPS} steps"));
        }
        let mut stage_names = HashSet::new();
        let mut step_names = HashSet::new();
        for (i, stage) in self.stages.iter().enumerate() {
            if !is_safe_name(&stage.name) {
                return invalid(format!(
                    "stage {}: name `{}` is not valid; use 1 to 64 letters, digits, `.`, `_`, \
                     `-`, starting with a letter or digit",
                    i + 1,
                    stage.name
                ));
            }
            let place = format!("stage `{}`", stage.name);
            if !stage_names.insert(stage.name.as_str()) {
                return invalid(format!("{place}: the name is used by an earlier stage"));
            }
            if stage.steps.is_empty() {
                return invalid(format!("{place}: a stage needs at least one step"));
            }
            check_params(&stage.params, &format!("{place}, params"))?;
            for step in &stage.steps {
                if !is_safe_name(&step.name) {
                    return invalid(format!(
                        "{place}: step name `{}` is not safe as a folder name; use 1 to 64 \
                         letters, digits, `.`, `_`, `-`, starting with a letter or digit",
                        step.name
                    ));
                }
                let place = format!("{place}, step `{}`", step.name);
                if !step_names.insert(step.name.as_str()) {
                    return invalid(format!("{place}: step names must be unique in a pipeline"));
                }
                if let Some(command) = &step.command {
                    Command::parse(command)
                        .map_err(|e| Error::Invalid(format!("{place}: {}", e.0)))?;
                }
                if let Some(spec) = &step.spec
                    && !settings.specs.contains_key(spec)
                {
                    let known: Vec<&str> = settings.specs.keys().map(String::as_str).collect();
                    return invalid(format!(
                        "{place}: unknown spec `{spec}`; known specs: {}",
                        known.join(", ")
                    ));
                }
                if let Some(datasets) = &step.datasets {
                    let max = lifecycle::submit::MAX_DATASETS;
                    if datasets.len() > max {
                        return invalid(format!("{place}: a step mounts at most {max} datasets"));
                    }
                    let mut seen = HashSet::new();
                    if let Some(twice) = datasets.iter().find(|d| !seen.insert(d.as_str())) {
                        return invalid(format!("{place}: dataset `{twice}` is named twice"));
                    }
                }
                if let Some(params) = &step.params {
                    check_params(params, &format!("{place}, params"))?;
                }
            }
        }
        Ok(())
    }

    fn steps(&self) -> impl Iterator<Item = (&StageDefinition, &StepDefinition)> {
        self.stages
            .iter()
            .flat_map(|stage| stage.steps.iter().map(move |step| (stage, step)))
    }

    /// Checks that every step names a task of `owner`.
    async fn check_tasks(&self, db: &PgPool, owner: Uuid) -> Result<(), Error> {
        let ids: Vec<Uuid> = self.steps().map(|(_, step)| step.task_id).collect();
        let owned = sqlx::query_scalar!(
            "SELECT id FROM tasks WHERE id = ANY($1) AND owner_id = $2",
            &ids,
            owner
        )
        .fetch_all(db)
        .await?;
        let owned: HashSet<Uuid> = owned.into_iter().collect();
        if let Some((stage, step)) = self.steps().find(|(_, s)| !owned.contains(&s.task_id)) {
            return invalid(format!(
                "stage `{}`, step `{}`: task {} is not one of the pipeline owner's tasks",
                stage.name, step.name, step.task_id
            ));
        }
        Ok(())
    }
}

/// A pipeline as the API shows it: its newest version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Pipeline {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub version: i32,
    #[serde(flatten)]
    pub definition: Definition,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Loads a pipeline (its newest version).
pub async fn get(db: &PgPool, id: Uuid) -> Result<Option<Pipeline>, sqlx::Error> {
    sqlx::query_as!(
        PipelineRow,
        r#"SELECT p.id, p.owner_id, v.name, p.version,
                  v.definition AS "definition: Json<Definition>", p.created_at, p.updated_at
           FROM pipelines p JOIN pipeline_versions v
             ON v.pipeline_id = p.id AND v.version = p.version
           WHERE p.id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
    .map(|p| p.map(Pipeline::from))
}

/// The row as `query_as!` reads it, with the definition wrapped.
struct PipelineRow {
    id: Uuid,
    owner_id: Uuid,
    name: String,
    version: i32,
    definition: Json<Definition>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<PipelineRow> for Pipeline {
    fn from(row: PipelineRow) -> Self {
        Pipeline {
            id: row.id,
            owner_id: row.owner_id,
            name: row.name,
            version: row.version,
            definition: row.definition.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// Who may do what with an owned pipeline or pipeline run: the owner anything, staff read,
/// anyone else nothing (told it does not exist).
fn allow(actor: &Actor, owner: Uuid, write: bool, what: &'static str) -> Result<(), Error> {
    if actor.id == owner {
        return Ok(());
    }
    if actor.role.reads_everything() {
        return match write {
            false => Ok(()),
            true => Err(Error::Forbidden(
                "teachers and admins may read other users' pipelines but not change or run them",
            )),
        };
    }
    Err(Error::NotFound(what))
}

/// Loads a pipeline the actor may read (or, with `write`, change).
pub async fn authorize(
    db: &PgPool,
    actor: &Actor,
    id: Uuid,
    write: bool,
) -> Result<Pipeline, Error> {
    let pipeline = get(db, id).await?.ok_or(Error::NotFound("pipeline"))?;
    allow(actor, pipeline.owner_id, write, "pipeline")?;
    Ok(pipeline)
}

/// Creates a pipeline of `owner`'s; nothing is stored unless the whole definition is valid.
pub async fn create(
    db: &PgPool,
    settings: &Settings,
    owner: Uuid,
    name: &str,
    definition: Definition,
) -> Result<Pipeline, Error> {
    check_name(name)?;
    definition.check(settings)?;
    definition.check_tasks(db, owner).await?;
    let id = Uuid::new_v4();
    let mut tx = db.begin().await?;
    sqlx::query!(
        "INSERT INTO pipelines (id, owner_id, name) VALUES ($1, $2, $3)",
        id,
        owner,
        name
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO pipeline_versions (pipeline_id, version, name, definition)
         VALUES ($1, 1, $2, $3)",
        id,
        name,
        Json(&definition) as _
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(db, id).await?.ok_or(Error::NotFound("pipeline"))
}

/// Writes a new version of the pipeline (the name and the definition whole); runs keep the
/// version they started with.
pub async fn update(
    db: &PgPool,
    settings: &Settings,
    pipeline: &Pipeline,
    name: &str,
    definition: Definition,
) -> Result<Pipeline, Error> {
    check_name(name)?;
    definition.check(settings)?;
    definition.check_tasks(db, pipeline.owner_id).await?;
    let mut tx = db.begin().await?;
    let version = sqlx::query_scalar!(
        "UPDATE pipelines SET version = version + 1, name = $2, updated_at = now()
         WHERE id = $1 RETURNING version",
        pipeline.id,
        name
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound("pipeline"))?;
    sqlx::query!(
        "INSERT INTO pipeline_versions (pipeline_id, version, name, definition)
         VALUES ($1, $2, $3, $4)",
        pipeline.id,
        version,
        name,
        Json(&definition) as _
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(db, pipeline.id)
        .await?
        .ok_or(Error::NotFound("pipeline"))
}

/// Deletes the pipeline with its versions and runs (the step runs stay, unlinked); refused
/// while one of its runs is active.
pub async fn delete(db: &PgPool, id: Uuid) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    sqlx::query!("SELECT id FROM pipelines WHERE id = $1 FOR UPDATE", id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound("pipeline"))?;
    let active = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pipeline_runs WHERE pipeline_id = $1
              AND status = ANY($2)) AS "active!""#,
        id,
        &PipelineStatus::names(&PipelineStatus::ACTIVE)
    )
    .fetch_one(&mut *tx)
    .await?;
    if active {
        return Err(Error::Conflict(
            "the pipeline has an active run; stop it first".into(),
        ));
    }
    sqlx::query!("DELETE FROM pipelines WHERE id = $1", id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A page of pipelines, newest change first; `owner` narrows to one owner's.
pub async fn list(
    db: &PgPool,
    owner: Option<Uuid>,
    page: PageRequest,
) -> Result<(Vec<Pipeline>, i64), sqlx::Error> {
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM pipelines WHERE ($1::uuid IS NULL OR owner_id = $1)"#,
        owner
    )
    .fetch_one(db)
    .await?;
    let rows = sqlx::query_as!(
        PipelineRow,
        r#"SELECT p.id, p.owner_id, v.name, p.version,
                  v.definition AS "definition: Json<Definition>", p.created_at, p.updated_at
           FROM pipelines p JOIN pipeline_versions v
             ON v.pipeline_id = p.id AND v.version = p.version
           WHERE ($1::uuid IS NULL OR p.owner_id = $1)
           ORDER BY p.updated_at DESC, p.id LIMIT $2 OFFSET $3"#,
        owner,
        page.limit(),
        page.offset()
    )
    .fetch_all(db)
    .await?;
    Ok((rows.into_iter().map(Pipeline::from).collect(), total))
}

/// Where a pipeline run is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum PipelineStatus {
    Queued,
    Running,
    AwaitingApproval,
    Succeeded,
    Failed,
    Stopped,
}

impl PipelineStatus {
    pub const ALL: [PipelineStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::AwaitingApproval,
        Self::Succeeded,
        Self::Failed,
        Self::Stopped,
    ];
    pub const ACTIVE: [PipelineStatus; 3] = [Self::Queued, Self::Running, Self::AwaitingApproval];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn names(statuses: &[PipelineStatus]) -> Vec<String> {
        statuses.iter().map(|s| s.as_str().to_owned()).collect()
    }

    pub fn is_terminal(self) -> bool {
        !Self::ACTIVE.contains(&self)
    }
}

/// A pipeline run with its stage/step grid.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PipelineRun {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub version: i32,
    pub owner_id: Uuid,
    pub status: PipelineStatus,
    /// Why it failed or stopped.
    pub reason: Option<String>,
    /// The values the run was started with (the defaults fill in the rest).
    pub params: Params,
    /// The pipeline run this one retries.
    pub retry_of: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub stages: Vec<StageView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StageView {
    pub name: String,
    pub approval: bool,
    /// `waiting`, `awaiting_approval`, `running`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    /// The decision on the stage's approval gate, once taken.
    pub decision: Option<Decision>,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepView {
    pub name: String,
    pub task_id: Uuid,
    /// The run's status once it has one; else `waiting` or `canceled`.
    pub status: String,
    pub run_id: Option<Uuid>,
    /// For a step a retry reused: the pipeline run whose run it reused.
    pub reused_from: Option<Uuid>,
    pub allow_failure: bool,
    /// The merged parameters the step's program gets as `PARAM_<NAME>`.
    pub params: Params,
}

/// An approval or rejection of a stage.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Decision {
    /// `approved` or `rejected`.
    pub decision: String,
    pub decided_by: Option<Uuid>,
    pub comment: String,
    pub decided_at: DateTime<Utc>,
}

/// Loads a pipeline run with its grid.
pub async fn get_run(db: &PgPool, id: Uuid) -> Result<Option<PipelineRun>, sqlx::Error> {
    let Some(row) = sqlx::query!(
        r#"SELECT id, pipeline_id, version, owner_id, status AS "status: PipelineStatus", reason,
                  params AS "params: Json<Params>", retry_of, created_at, finished_at, stage
           FROM pipeline_runs WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    let stages = sqlx::query!(
        "SELECT stage, name, approval FROM pipeline_stages WHERE pipeline_run_id = $1 ORDER BY stage",
        id
    )
    .fetch_all(db)
    .await?;
    let steps = sqlx::query!(
        r#"SELECT s.stage, s.name, s.task_id, s.state, s.run_id, s.reused_from, s.allow_failure,
                  s.params AS "params: Json<Params>", r.status AS "run_status?: RunStatus"
           FROM pipeline_steps s LEFT JOIN runs r ON r.id = s.run_id
           WHERE s.pipeline_run_id = $1 ORDER BY s.stage, s.name"#,
        id
    )
    .fetch_all(db)
    .await?;
    let decisions = sqlx::query!(
        "SELECT stage, decision, decided_by, comment, decided_at FROM pipeline_approvals
         WHERE pipeline_run_id = $1",
        id
    )
    .fetch_all(db)
    .await?;
    let status = row.status;
    let stages = stages
        .into_iter()
        .map(|stage| {
            let steps: Vec<StepView> = steps
                .iter()
                .filter(|s| s.stage == stage.stage)
                .map(|s| StepView {
                    name: s.name.clone(),
                    task_id: s.task_id,
                    status: s
                        .run_status
                        .map_or_else(|| s.state.clone(), |r| r.as_str().to_owned()),
                    run_id: s.run_id,
                    reused_from: s.reused_from,
                    allow_failure: s.allow_failure,
                    params: s.params.0.clone(),
                })
                .collect();
            let statuses: Vec<(&str, bool)> = steps
                .iter()
                .map(|s| (s.status.as_str(), s.allow_failure))
                .collect();
            let current = stage.stage == row.stage;
            StageView {
                status: stage_status(&statuses, current, status).to_owned(),
                decision: decisions
                    .iter()
                    .find(|d| d.stage == stage.stage)
                    .map(|d| Decision {
                        decision: d.decision.clone(),
                        decided_by: d.decided_by,
                        comment: d.comment.clone(),
                        decided_at: d.decided_at,
                    }),
                name: stage.name,
                approval: stage.approval,
                steps,
            }
        })
        .collect();
    Ok(Some(PipelineRun {
        id: row.id,
        pipeline_id: row.pipeline_id,
        version: row.version,
        owner_id: row.owner_id,
        status,
        reason: row.reason,
        params: row.params.0,
        retry_of: row.retry_of,
        created_at: row.created_at,
        finished_at: row.finished_at,
        stages,
    }))
}

/// A stage's status from its steps' (`(status, allow_failure)`), whether it is the stage the
/// pipeline run is at, and the pipeline run's status.
fn stage_status(steps: &[(&str, bool)], current: bool, run: PipelineStatus) -> &'static str {
    let ended_badly = |s: &str| matches!(s, "failed" | "stopped" | "canceled");
    if current && run == PipelineStatus::AwaitingApproval {
        return "awaiting_approval";
    }
    if steps
        .iter()
        .any(|(s, _)| RunStatus::parse(s).is_some_and(|s| !s.is_terminal()))
    {
        return "running";
    }
    if steps
        .iter()
        .any(|(s, ok)| !ok && ended_badly(s) && *s != "canceled")
    {
        return "failed";
    }
    if steps
        .iter()
        .all(|(s, ok)| *s == "succeeded" || (*ok && ended_badly(s)))
    {
        return "succeeded";
    }
    if steps.iter().any(|(s, _)| *s == "canceled") {
        return "canceled";
    }
    "waiting"
}

/// Loads a pipeline run the actor may read (or, with `write`, change).
pub async fn authorize_run(
    db: &PgPool,
    actor: &Actor,
    id: Uuid,
    write: bool,
) -> Result<PipelineRun, Error> {
    let run = get_run(db, id)
        .await?
        .ok_or(Error::NotFound("pipeline run"))?;
    allow(actor, run.owner_id, write, "pipeline run")?;
    Ok(run)
}

/// A page of the pipeline's runs, newest first; `status` narrows to one status.
pub async fn list_runs(
    db: &PgPool,
    pipeline_id: Uuid,
    status: Option<PipelineStatus>,
    page: PageRequest,
) -> Result<(Vec<PipelineRun>, i64), sqlx::Error> {
    let status = status.map(|s| s.as_str());
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM pipeline_runs
           WHERE pipeline_id = $1 AND ($2::text IS NULL OR status = $2)"#,
        pipeline_id,
        status
    )
    .fetch_one(db)
    .await?;
    let ids = sqlx::query_scalar!(
        "SELECT id FROM pipeline_runs WHERE pipeline_id = $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY created_at DESC, id LIMIT $3 OFFSET $4",
        pipeline_id,
        status,
        page.limit(),
        page.offset()
    )
    .fetch_all(db)
    .await?;
    let mut runs = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(run) = get_run(db, id).await? {
            runs.push(run);
        }
    }
    Ok((runs, total))
}

/// A step resolved for one pipeline run.
struct Resolved {
    stage: i32,
    name: String,
    task_id: Uuid,
    command: String,
    language: String,
    image: String,
    spec: RunSpec,
    datasets: Vec<String>,
    params: Params,
    code_sha256: String,
    allow_failure: bool,
}

/// Merges parameters: pipeline defaults → run values → stage → step.
pub fn merge_params(layers: &[&Params]) -> Params {
    let mut merged = Params::new();
    for layer in layers {
        merged.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    merged
}

impl Lifecycle<'_> {
    /// Starts a run of the pipeline's newest version with `values` for its parameters: every
    /// step's task is snapshotted (as a submit does) and resolved, the pipeline run committed
    /// with its first stage queued in one transaction, then the first stage enqueued.
    pub async fn start_pipeline(
        &self,
        actor: &Actor,
        pipeline_id: Uuid,
        values: Params,
    ) -> Result<PipelineRun, Error> {
        let pipeline = authorize(self.db, actor, pipeline_id, true).await?;
        check_params(&values, "params")?;
        if let Some(unknown) = values
            .keys()
            .find(|k| !pipeline.definition.params.contains_key(*k))
        {
            let known: Vec<&str> = pipeline
                .definition
                .params
                .keys()
                .map(String::as_str)
                .collect();
            return invalid(format!(
                "params: `{unknown}` is not a parameter of this pipeline; its parameters: {}",
                known.join(", ")
            ));
        }
        let mut resolved = Vec::new();
        for (index, stage) in pipeline.definition.stages.iter().enumerate() {
            for step in &stage.steps {
                let place = format!("stage `{}`, step `{}`", stage.name, step.name);
                let step = self
                    .resolve_step(&pipeline, index as i32, stage, step, &values)
                    .await
                    .map_err(|e| match e {
                        Error::Invalid(m) => Error::Invalid(format!("{place}: {m}")),
                        Error::Lifecycle(lifecycle::Error::Invalid(m)) => {
                            Error::Invalid(format!("{place}: {m}"))
                        }
                        e => e,
                    })?;
                resolved.push(step);
            }
        }
        let id = Uuid::new_v4();
        let mut tx = self.db.begin().await?;
        sqlx::query!(
            "INSERT INTO pipeline_runs (id, pipeline_id, version, owner_id, status, params)
             VALUES ($1, $2, $3, $4, 'queued', $5)",
            id,
            pipeline.id,
            pipeline.version,
            pipeline.owner_id,
            Json(&values) as _
        )
        .execute(&mut *tx)
        .await?;
        for (index, stage) in pipeline.definition.stages.iter().enumerate() {
            sqlx::query!(
                "INSERT INTO pipeline_stages (pipeline_run_id, stage, name, approval)
                 VALUES ($1, $2, $3, $4)",
                id,
                index as i32,
                stage.name,
                stage.approval
            )
            .execute(&mut *tx)
            .await?;
        }
        for step in &resolved {
            sqlx::query!(
                "INSERT INTO pipeline_steps (pipeline_run_id, stage, name, task_id, command,
                     language, image, spec_name, spec, datasets, params, code_sha256,
                     allow_failure)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                id,
                step.stage,
                step.name,
                step.task_id,
                step.command,
                step.language,
                step.image,
                step.spec.name,
                Json(&step.spec) as _,
                &step.datasets,
                Json(&step.params) as _,
                step.code_sha256,
                step.allow_failure
            )
            .execute(&mut *tx)
            .await?;
        }
        let queued = advance_in(&mut tx, id, "api").await?;
        tx.commit().await.map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                Error::Conflict("a task of the pipeline was deleted meanwhile".into())
            }
            _ => Error::Db(e),
        })?;
        self.enqueue_steps(&queued).await;
        tracing::info!(pipeline_run = %id, pipeline = %pipeline.id, "pipeline run started");
        get_run(self.db, id)
            .await?
            .ok_or(Error::NotFound("pipeline run"))
    }

    async fn resolve_step(
        &self,
        pipeline: &Pipeline,
        stage_index: i32,
        stage: &StageDefinition,
        step: &StepDefinition,
        values: &Params,
    ) -> Result<Resolved, Error> {
        let owner = pipeline.owner_id;
        let (task, hashed) = snapshots::read_task(self.db, step.task_id, |t| t.owner_id == owner)
            .await?
            .ok_or_else(|| Error::Invalid(format!("task {} no longer exists", step.task_id)))?;
        let hashed = hashed.ok_or_else(|| {
            Error::Invalid(format!(
                "task {} is not one of the pipeline owner's tasks",
                step.task_id
            ))
        })?;
        let snapshot = match &hashed.kept {
            Some(bytes) => {
                snapshots::store_kept(self.db, self.storage, &hashed.sha256, bytes).await?
            }
            None => snapshots::store(self.db, self.storage, task.id).await?,
        };
        let language = self.settings.languages.get(&task.language).ok_or_else(|| {
            Error::Conflict(format!(
                "the task's language `{}` is no longer offered",
                task.language
            ))
        })?;
        let command = match (&step.command, &task.command) {
            (Some(command), _) => command.clone(),
            (None, Some(command)) => command.clone(),
            (None, None) => {
                language.command_for(task.main_file.as_deref().unwrap_or(&language.main_file))
            }
        };
        let spec_name = step
            .spec
            .clone()
            .unwrap_or_else(|| self.settings.run.default_spec.clone());
        let limits = self
            .settings
            .specs
            .get(&spec_name)
            .ok_or_else(|| Error::Invalid(format!("unknown spec `{spec_name}`")))?
            .clone();
        let datasets = self
            .resolve_datasets(step.datasets.as_deref().unwrap_or_default())
            .await?;
        let empty = Params::new();
        let params = merge_params(&[
            &pipeline.definition.params,
            values,
            &stage.params,
            step.params.as_ref().unwrap_or(&empty),
        ]);
        Ok(Resolved {
            stage: stage_index,
            name: step.name.clone(),
            task_id: task.id,
            command,
            language: task.language.clone(),
            image: language.image.clone(),
            spec: RunSpec {
                name: spec_name,
                limits,
            },
            datasets,
            params,
            code_sha256: snapshot.sha256,
            allow_failure: step.allow_failure,
        })
    }

    /// Stops the pipeline run: the run ends `stopped`, steps not started are canceled (queued
    /// step runs too, in the same transaction), launched step runs are stopped.
    pub async fn stop_pipeline_run(&self, actor: &Actor, id: Uuid) -> Result<PipelineRun, Error> {
        let run = authorize_run(self.db, actor, id, true).await?;
        if !run.status.is_terminal() {
            let reason = "stopped by its owner";
            sqlx::query_scalar!(
                r#"SELECT end_pipeline_run($1, 'stopped', $2, 'api') AS "ended!""#,
                id,
                reason
            )
            .fetch_one(self.db)
            .await?;
        }
        let launched = sqlx::query_scalar!(
            "SELECT id FROM runs WHERE pipeline_run_id = $1 AND status = ANY($2)",
            id,
            &RunStatus::names(&RunStatus::LAUNCHED)
        )
        .fetch_all(self.db)
        .await?;
        for run_id in launched {
            self.stop(actor, run_id).await?;
        }
        get_run(self.db, id)
            .await?
            .ok_or(Error::NotFound("pipeline run"))
    }

    /// A new pipeline run of the same version, parameters and resolved steps (their code
    /// snapshots included): steps whose run succeeded are reused (their run and outputs), the
    /// others run again. Only a finished pipeline run can be retried.
    pub async fn retry_pipeline_run(&self, actor: &Actor, id: Uuid) -> Result<PipelineRun, Error> {
        let old = authorize_run(self.db, actor, id, true).await?;
        if !old.status.is_terminal() {
            return Err(Error::Conflict(
                "only a finished pipeline run can be retried".into(),
            ));
        }
        let new = Uuid::new_v4();
        let mut tx = self.db.begin().await?;
        sqlx::query!(
            "INSERT INTO pipeline_runs (id, pipeline_id, version, owner_id, status, params, retry_of)
             SELECT $1, pipeline_id, version, owner_id, 'queued', params, id
             FROM pipeline_runs WHERE id = $2",
            new,
            id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO pipeline_stages (pipeline_run_id, stage, name, approval)
             SELECT $1, stage, name, approval FROM pipeline_stages WHERE pipeline_run_id = $2",
            new,
            id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO pipeline_steps (pipeline_run_id, stage, name, task_id, command, language,
                 image, spec_name, spec, datasets, params, code_sha256, allow_failure, state,
                 run_id, reused_from)
             SELECT $1, s.stage, s.name, s.task_id, s.command, s.language, s.image, s.spec_name,
                    s.spec, s.datasets, s.params, s.code_sha256, s.allow_failure,
                    CASE WHEN r.status = 'succeeded' THEN 'reused' ELSE 'waiting' END,
                    CASE WHEN r.status = 'succeeded' THEN s.run_id END,
                    CASE WHEN r.status = 'succeeded' THEN coalesce(s.reused_from, s.pipeline_run_id) END
             FROM pipeline_steps s LEFT JOIN runs r ON r.id = s.run_id
             WHERE s.pipeline_run_id = $2",
            new,
            id
        )
        .execute(&mut *tx)
        .await?;
        let queued = advance_in(&mut tx, new, "api").await?;
        tx.commit().await?;
        self.enqueue_steps(&queued).await;
        tracing::info!(pipeline_run = %new, retry_of = %id, "pipeline run retried");
        get_run(self.db, new)
            .await?
            .ok_or(Error::NotFound("pipeline run"))
    }

    /// Approves (`approve`) or rejects the stage the pipeline run waits at; staff only. The
    /// decision is recorded with who and when; approval queues the stage, rejection fails the
    /// pipeline run. `stage` is the stage's name or its number (from 1).
    pub async fn decide_stage(
        &self,
        actor: &Actor,
        id: Uuid,
        stage: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<PipelineRun, Error> {
        let run = get_run(self.db, id)
            .await?
            .ok_or(Error::NotFound("pipeline run"))?;
        if !matches!(actor.role, Role::Teacher | Role::Admin) {
            return Err(match run.owner_id == actor.id {
                true => Error::Forbidden("only teachers and admins may approve or reject a stage"),
                false => Error::NotFound("pipeline run"),
            });
        }
        let comment = comment.unwrap_or_default();
        if comment.chars().count() > MAX_COMMENT_CHARS || comment.contains('\0') {
            return invalid(format!(
                "comment must be at most {MAX_COMMENT_CHARS} characters without NUL characters"
            ));
        }
        let index = match stage.parse::<usize>() {
            Ok(n) if (1..=run.stages.len()).contains(&n) => n - 1,
            _ => run
                .stages
                .iter()
                .position(|s| s.name == stage)
                .ok_or(Error::NotFound("stage"))?,
        };
        let mut tx = self.db.begin().await?;
        let at = sqlx::query!(
            r#"SELECT status AS "status: PipelineStatus", stage FROM pipeline_runs
               WHERE id = $1 FOR UPDATE"#,
            id
        )
        .fetch_one(&mut *tx)
        .await?;
        if at.status != PipelineStatus::AwaitingApproval || at.stage != index as i32 {
            return Err(Error::Conflict(format!(
                "the pipeline run is not waiting for approval of stage `{}`",
                run.stages[index].name
            )));
        }
        sqlx::query!(
            "INSERT INTO pipeline_approvals (pipeline_run_id, stage, decision, decided_by, comment)
             VALUES ($1, $2, $3, $4, $5)",
            id,
            index as i32,
            if approve { "approved" } else { "rejected" },
            actor.id,
            comment
        )
        .execute(&mut *tx)
        .await?;
        let queued = advance_in(&mut tx, id, "api").await?;
        tx.commit().await?;
        self.enqueue_steps(&queued).await;
        tracing::info!(pipeline_run = %id, stage = index + 1, approve, by = %actor.id,
            "approval gate decided");
        get_run(self.db, id)
            .await?
            .ok_or(Error::NotFound("pipeline run"))
    }

    /// Adds the stream entries of step runs an advance queued; a lost one is re-enqueued by
    /// the reconciler, like any queued run's.
    pub async fn enqueue_steps(&self, runs: &[Uuid]) {
        for (run, e) in self.queue.enqueue_each(runs).await {
            tracing::warn!(run_id = %run, error = %e,
                "could not add a step run to the stream; the reconciler will enqueue it");
        }
    }
}

/// Moves the pipeline run on inside `tx`; the ids of the runs it queued.
async fn advance_in(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    source: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT advance_pipeline_run($1, $2) AS "id!""#,
        id,
        source
    )
    .fetch_all(tx)
    .await
}

/// Moves on every active pipeline run none of whose step runs is active (what a lost advance
/// would leave behind; the trigger makes that rare); the ids of the runs queued. Idempotent.
pub async fn advance_stalled(db: &PgPool, source: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT advance_pipeline_run(p.id, $1) AS "id!" FROM pipeline_runs p
           WHERE p.status = ANY($2)
             AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.pipeline_run_id = p.id
                             AND r.status = ANY($3))"#,
        source,
        &PipelineStatus::names(&[PipelineStatus::Queued, PipelineStatus::Running]),
        &RunStatus::names(&RunStatus::ACTIVE)
    )
    .fetch_all(db)
    .await
}

/// The queued step runs of the pipeline run `run_id` belongs to (empty for a run of no
/// pipeline): what the worker that recorded `run_id`'s end enqueues.
pub async fn queued_siblings(db: &PgPool, run_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT q.id FROM runs r JOIN runs q ON q.pipeline_run_id = r.pipeline_run_id
         WHERE r.id = $1 AND q.status = 'queued'",
        run_id
    )
    .fetch_all(db)
    .await
}

/// What a step's program gets beyond a run's: its parameters and the earlier steps' outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepEnvironment {
    /// Merged parameters, `PARAM_<NAME>`.
    pub params: Params,
    /// `(step name, run id)` of every step of an earlier stage that has a run, whose outputs
    /// appear under `$INPUT_DIR/<step name>/`.
    pub inputs: Vec<(String, Uuid)>,
}

/// The step environment of `run_id`, or `None` for a run of no pipeline.
pub async fn step_environment(
    db: &PgPool,
    run_id: Uuid,
) -> Result<Option<StepEnvironment>, sqlx::Error> {
    let Some(step) = sqlx::query!(
        r#"SELECT s.pipeline_run_id, s.stage, s.params AS "params: Json<Params>"
           FROM runs r JOIN pipeline_steps s
             ON s.pipeline_run_id = r.pipeline_run_id AND s.name = r.pipeline_step
           WHERE r.id = $1"#,
        run_id
    )
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    let inputs = sqlx::query!(
        r#"SELECT name, run_id AS "run_id!" FROM pipeline_steps
           WHERE pipeline_run_id = $1 AND stage < $2 AND run_id IS NOT NULL ORDER BY name"#,
        step.pipeline_run_id,
        step.stage
    )
    .fetch_all(db)
    .await?;
    Ok(Some(StepEnvironment {
        params: step.params.0,
        inputs: inputs.into_iter().map(|i| (i.name, i.run_id)).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::with_overrides([("local_stack", "true".to_owned())]).unwrap()
    }

    fn step(name: &str) -> StepDefinition {
        StepDefinition {
            name: name.into(),
            task_id: Uuid::new_v4(),
            command: None,
            spec: None,
            datasets: None,
            params: None,
            allow_failure: false,
        }
    }

    fn stage(name: &str, steps: Vec<StepDefinition>) -> StageDefinition {
        StageDefinition {
            name: name.into(),
            approval: false,
            params: Params::new(),
            steps,
        }
    }

    fn refusal(definition: Definition) -> String {
        match definition.check(&settings()) {
            Err(Error::Invalid(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bad_definitions_are_refused_naming_the_stage_or_step() {
        let no_stages = Definition {
            params: Params::new(),
            stages: vec![],
        };
        assert!(refusal(no_stages).contains("at least one stage"));
        let empty = Definition {
            params: Params::new(),
            stages: vec![stage("prep", vec![step("a")]), stage("train", vec![])],
        };
        assert!(refusal(empty).contains("stage `train`"));
        let twice = Definition {
            params: Params::new(),
            stages: vec![
                stage("prep", vec![step("a")]),
                stage("train", vec![step("a")]),
            ],
        };
        assert!(refusal(twice).contains("stage `train`, step `a`"));
        let unsafe_name = Definition {
            params: Params::new(),
            stages: vec![stage("prep", vec![step("../up")])],
        };
        assert!(refusal(unsafe_name).contains("`../up`"));
        let mut lower = step("a");
        lower.params = Some(Params::from([("lower".to_owned(), "1".to_owned())]));
        let bad_param = Definition {
            params: Params::new(),
            stages: vec![stage("prep", vec![lower])],
        };
        assert!(refusal(bad_param).contains("stage `prep`, step `a`, params"));
        let mut big = step("a");
        big.spec = Some("nope".into());
        assert!(
            refusal(Definition {
                params: Params::new(),
                stages: vec![stage("prep", vec![big])],
            })
            .contains("unknown spec")
        );
    }

    #[test]
    fn names_are_folder_safe_and_params_env_safe() {
        for ok in ["a", "train-1", "x.y_z", "A9"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        for ok in ["A", "LEARNING_RATE", "X1"] {
            assert!(is_param_name(ok), "{ok}");
        }
        for bad in ["", "a", "1X", "_X", "X-Y", "Ä"] {
            assert!(!is_param_name(bad), "{bad}");
        }
    }

    #[test]
    fn later_layers_of_params_win() {
        let p = |k: &str, v: &str| Params::from([(k.to_owned(), v.to_owned())]);
        let merged = merge_params(&[
            &p("A", "default"),
            &p("A", "run"),
            &p("B", "stage"),
            &p("B", "step"),
        ]);
        assert_eq!(
            merged,
            Params::from([("A".into(), "run".into()), ("B".into(), "step".into())])
        );
    }

    #[test]
    fn a_stage_status_follows_its_steps() {
        use PipelineStatus::*;
        assert_eq!(
            stage_status(&[("running", false), ("succeeded", false)], true, Running),
            "running"
        );
        assert_eq!(
            stage_status(&[("failed", true), ("succeeded", false)], false, Running),
            "succeeded"
        );
        assert_eq!(
            stage_status(&[("failed", false), ("succeeded", false)], true, Failed),
            "failed"
        );
        assert_eq!(
            stage_status(&[("waiting", false)], true, AwaitingApproval),
            "awaiting_approval"
        );
        assert_eq!(
            stage_status(&[("canceled", false)], false, Stopped),
            "canceled"
        );
        assert_eq!(
            stage_status(&[("waiting", false)], false, Running),
            "waiting"
        );
    }
}
