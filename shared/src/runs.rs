//! Runs: their rows, their phases and the rules of moving between them.
//!
//! Phases only move forward (`queued → dispatched → pending → running → succeeded | failed`,
//! plus `stopping → stopped` and `canceled`); terminal phases are final. Every change is one
//! conditional `UPDATE … WHERE status = ANY(<allowed sources>)` that writes its `run_events`
//! row in the same statement, so replaying a transition is a no-op and several replicas may
//! report the same execution.
//!
//! Statuses and reasons are enums from the database to the JSON (stored as the same lower-case
//! text the API shows); every list of statuses a query needs is bound from a constant of
//! [`RunStatus`], never spelled in SQL. Queries are checked against the schema at compile time
//! (`sqlx::query!`; the offline data is in `.sqlx/`, see `docs/decisions.md`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::config::Spec;
use crate::domain::PageRequest;
use crate::objects::RunObjects;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run not found")]
    NotFound,
    #[error("the task already has an active run")]
    TaskBusy,
    #[error("you already have {max} runs queued or running; wait for one to finish")]
    TooManyActive { max: u32 },
    #[error("only a finished run can be retried")]
    NotFinished,
    /// The owner already has a run created with this `Idempotency-Key`.
    #[error("this Idempotency-Key was used before")]
    IdempotencyKeyUsed,
    /// The owner's kept runs hold `used` bytes; with the new run's they exceed the quota.
    #[error("the storage quota is exceeded ({used} bytes used)")]
    OverQuota { used: u64 },
    /// The run's code snapshot is not stored (any more): purged, or swept meanwhile.
    #[error("the code snapshot of this run is no longer stored")]
    SnapshotGone,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Where a run is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Dispatched,
    Pending,
    Running,
    Succeeded,
    Failed,
    Stopping,
    Stopped,
    Canceled,
}

use RunStatus::*;

impl RunStatus {
    pub const ALL: [RunStatus; 9] = [
        Queued, Dispatched, Pending, Running, Succeeded, Failed, Stopping, Stopped, Canceled,
    ];
    /// The phases in which a run holds (or is about to hold) capacity.
    pub const ACTIVE: [RunStatus; 5] = [Queued, Dispatched, Pending, Running, Stopping];
    /// The phases in which an execution exists or is being created: a run whose execution is
    /// lost in one of them may be queued again for another attempt.
    pub const LAUNCHED: [RunStatus; 3] = [Dispatched, Pending, Running];
    /// The final phases.
    pub const TERMINAL: [RunStatus; 4] = [Succeeded, Failed, Stopped, Canceled];

    /// The names of `statuses`, for binding as a Postgres `text[]` (`status = ANY($n)`).
    pub fn names(statuses: &[RunStatus]) -> Vec<String> {
        statuses.iter().map(|s| s.as_str().to_owned()).collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Queued => "queued",
            Dispatched => "dispatched",
            Pending => "pending",
            Running => "running",
            Succeeded => "succeeded",
            Failed => "failed",
            Stopping => "stopping",
            Stopped => "stopped",
            Canceled => "canceled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// The phases a run may move to `self` from: this table is the forward-only rule.
    pub fn sources(self) -> &'static [RunStatus] {
        match self {
            Queued => &[],
            Dispatched => &[Queued],
            Pending => &[Queued, Dispatched],
            Running => &[Queued, Dispatched, Pending],
            Succeeded => &[Dispatched, Pending, Running],
            Failed => &[Queued, Dispatched, Pending, Running],
            Stopping => &[Dispatched, Pending, Running],
            Stopped => &[Stopping],
            Canceled => &[Queued],
        }
    }
}

/// Why a run ended other than by its program's own exit.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Reason {
    OomKilled,
    DeadlineExceeded,
    OutputLimitExceeded,
    ImagePullFailed,
    Evicted,
    LaunchFailed,
    ExecutorLost,
    DeadLettered,
    StoppedByUser,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::OomKilled,
        Reason::DeadlineExceeded,
        Reason::OutputLimitExceeded,
        Reason::ImagePullFailed,
        Reason::Evicted,
        Reason::LaunchFailed,
        Reason::ExecutorLost,
        Reason::DeadLettered,
        Reason::StoppedByUser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OomKilled => "oom_killed",
            Reason::DeadlineExceeded => "deadline_exceeded",
            Reason::OutputLimitExceeded => "output_limit_exceeded",
            Reason::ImagePullFailed => "image_pull_failed",
            Reason::Evicted => "evicted",
            Reason::LaunchFailed => "launch_failed",
            Reason::ExecutorLost => "executor_lost",
            Reason::DeadLettered => "dead_lettered",
            Reason::StoppedByUser => "stopped_by_user",
        }
    }
}

/// The spec a run was submitted with, frozen into the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSpec {
    pub name: String,
    #[serde(flatten)]
    pub limits: Spec,
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Run {
    pub id: Uuid,
    pub task_id: Uuid,
    pub owner_id: Uuid,
    pub status: RunStatus,
    /// Set for anything but the program's own exit (`oom_killed`, `deadline_exceeded` …).
    pub reason: Option<Reason>,
    pub exit_code: Option<i32>,
    pub command: String,
    pub language: String,
    pub image: String,
    #[schema(value_type = RunSpec)]
    pub spec: Json<RunSpec>,
    pub datasets: Vec<String>,
    pub remarks: String,
    /// The run whose code snapshot this run executes (itself unless it is a retry); the
    /// snapshot itself is named by `code_sha256`.
    pub snapshot_of: Uuid,
    pub code_sha256: String,
    pub retry_of: Option<Uuid>,
    pub worker: Option<String>,
    pub executor: Option<String>,
    pub log_bytes: Option<i64>,
    pub log_truncated: bool,
    /// 1, or more when an execution was lost with its worker and the run was queued again.
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    pub queued_at: DateTime<Utc>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set when the retention removed the run's log, outputs and its hold on the snapshot; the
    /// row stays as the record.
    pub purged_at: Option<DateTime<Utc>>,
    /// The pipeline run this run is a step of, and the step's name (`null` for a run of no
    /// pipeline).
    pub pipeline_run_id: Option<Uuid>,
    pub pipeline_step: Option<String>,
}

impl Run {
    /// The key of the code snapshot this run executes.
    pub fn code_key(&self) -> String {
        RunObjects::snapshot(&self.code_sha256)
    }

    /// The keys of this run's own objects.
    pub fn objects(&self) -> RunObjects {
        RunObjects::new(self.id)
    }
}

/// A checked query of whole [`Run`]s: `SELECT <every column> FROM runs` followed by `$tail`
/// (a string literal), with `$arg`s bound to its parameters.
macro_rules! select_runs {
    ($tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Run,
            "SELECT id, task_id, owner_id, status AS \"status: RunStatus\",
                reason AS \"reason: Reason\", exit_code, command, language, image,
                spec AS \"spec: Json<RunSpec>\", datasets, remarks, snapshot_of, code_sha256,
                retry_of, worker, executor, log_bytes, log_truncated, attempt, created_at,
                queued_at, dispatched_at, started_at, finished_at, purged_at, pipeline_run_id,
                pipeline_step
             FROM runs " + $tail
            $(, $arg)*
        )
    };
}

/// One transition in a run's history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunEvent {
    pub phase: RunStatus,
    pub at: DateTime<Utc>,
    pub source: String,
    pub detail: String,
}

/// A run about to be queued.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: Uuid,
    pub task_id: Uuid,
    pub owner_id: Uuid,
    pub command: String,
    pub language: String,
    pub image: String,
    pub spec: RunSpec,
    pub datasets: Vec<String>,
    pub remarks: String,
    pub snapshot_of: Uuid,
    pub code_sha256: String,
    pub retry_of: Option<Uuid>,
    /// The caller's `Idempotency-Key` and the fingerprint of its request, stored with the run.
    pub idempotency: Option<Idempotency>,
}

/// An `Idempotency-Key` with the fingerprint of the request that first used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

/// The run the owner created with `key`, and the fingerprint of the request that created it.
pub async fn find_by_idempotency_key(
    pool: &PgPool,
    owner_id: Uuid,
    key: &str,
) -> Result<Option<(Run, String)>, sqlx::Error> {
    let found = sqlx::query!(
        "SELECT id, request_fingerprint FROM runs WHERE owner_id = $1 AND idempotency_key = $2",
        owner_id,
        key,
    )
    .fetch_optional(pool)
    .await?;
    let Some(found) = found else {
        return Ok(None);
    };
    Ok(get(pool, found.id)
        .await?
        .map(|run| (run, found.request_fingerprint.unwrap_or_default())))
}

/// The limits a new run is admitted under.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// `runs.max_active_per_user`.
    pub max_active: u32,
    /// `runs.storage_quota_bytes` (0: no quota).
    pub quota: u64,
    /// Bytes the new run adds to its owner's usage (the task's files).
    pub adding: u64,
}

/// A run just committed, and its first event: what the caller answers with, without reading
/// the row back.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub run: Run,
    pub event: RunEvent,
}

/// Commits the run as `queued` with its first event, without a quota check (see [`admit`]).
pub async fn create(pool: &PgPool, new: NewRun, max_active: u32) -> Result<Run, Error> {
    let admission = Admission {
        max_active,
        quota: 0,
        adding: 0,
    };
    Ok(admit(pool, new, admission).await?.run)
}

/// Commits the run as `queued` with its first event, in one round trip (the `admit_run`
/// function, one transaction): under the owner's row lock, so the limits hold exactly under
/// concurrent submissions, the task must have no active run, the owner fewer than
/// `max_active`, and their stored bytes plus `adding` must fit `quota`; the snapshot is held
/// against the sweep until the run references it. The run is built from `new` and the
/// timestamps the insert returned (nothing is read back).
pub async fn admit(pool: &PgPool, new: NewRun, admission: Admission) -> Result<Admitted, Error> {
    let detail = match new.retry_of {
        Some(original) => format!("retry of {original}"),
        None => "submitted".to_owned(),
    };
    let row = sqlx::query!(
        r#"SELECT outcome AS "outcome!", used AS "used!", created_at, event_at
           FROM admit_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                          $17, $18, $19, $20)"#,
        new.id,
        new.task_id,
        new.owner_id,
        new.command,
        new.language,
        new.image,
        new.spec.name,
        Json(&new.spec) as _,
        &new.datasets,
        new.remarks,
        new.snapshot_of,
        new.code_sha256,
        new.retry_of,
        new.idempotency.as_ref().map(|i| i.key.as_str()),
        new.idempotency.as_ref().map(|i| i.fingerprint.as_str()),
        detail,
        &RunStatus::names(&RunStatus::ACTIVE),
        i32::try_from(admission.max_active).unwrap_or(i32::MAX),
        i64::try_from(admission.quota).unwrap_or(i64::MAX),
        i64::try_from(admission.adding).unwrap_or(i64::MAX),
    )
    .fetch_one(pool)
    .await;
    let row = match row {
        Ok(row) => row,
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("runs_one_active_per_task") => {
            return Err(Error::TaskBusy);
        }
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("runs_owner_idempotency_key") => {
            return Err(Error::IdempotencyKeyUsed);
        }
        Err(e) => return Err(e.into()),
    };
    let (created_at, event_at) = match (row.outcome.as_str(), row.created_at, row.event_at) {
        ("queued", Some(created_at), Some(event_at)) => (created_at, event_at),
        ("task_busy", ..) => return Err(Error::TaskBusy),
        ("too_many_active", ..) => {
            return Err(Error::TooManyActive {
                max: admission.max_active,
            });
        }
        ("over_quota", ..) => {
            return Err(Error::OverQuota {
                used: row.used.max(0) as u64,
            });
        }
        ("snapshot_gone", ..) => return Err(Error::SnapshotGone),
        (other, ..) => {
            return Err(Error::Db(sqlx::Error::Protocol(format!(
                "admit_run answered `{other}`"
            ))));
        }
    };
    let event = RunEvent {
        phase: Queued,
        at: event_at,
        source: "api".to_owned(),
        detail,
    };
    let run = Run {
        id: new.id,
        task_id: new.task_id,
        owner_id: new.owner_id,
        status: Queued,
        reason: None,
        exit_code: None,
        command: new.command,
        language: new.language,
        image: new.image,
        spec: Json(new.spec),
        datasets: new.datasets,
        remarks: new.remarks,
        snapshot_of: new.snapshot_of,
        code_sha256: new.code_sha256,
        retry_of: new.retry_of,
        worker: None,
        executor: None,
        log_bytes: None,
        log_truncated: false,
        attempt: 1,
        created_at,
        queued_at: created_at,
        dispatched_at: None,
        started_at: None,
        finished_at: None,
        purged_at: None,
        pipeline_run_id: None,
        pipeline_step: None,
    };
    Ok(Admitted { run, event })
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Run>, sqlx::Error> {
    select_runs!("WHERE id = $1", id).fetch_optional(pool).await
}

/// The runs of `ids` that exist, in no particular order: one query for a batch.
pub async fn get_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Run>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    select_runs!("WHERE id = ANY($1)", ids)
        .fetch_all(pool)
        .await
}

pub async fn events(pool: &PgPool, id: Uuid) -> Result<Vec<RunEvent>, sqlx::Error> {
    sqlx::query_as!(
        RunEvent,
        r#"SELECT phase AS "phase: RunStatus", at, source, detail
           FROM run_events WHERE run_id = $1 ORDER BY id"#,
        id,
    )
    .fetch_all(pool)
    .await
}

/// A page of a task's runs, newest first, optionally only those in `status`.
pub async fn list(
    pool: &PgPool,
    task_id: Uuid,
    status: Option<RunStatus>,
    page: PageRequest,
) -> Result<(Vec<Run>, i64), sqlx::Error> {
    let status = status.map(RunStatus::as_str);
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM runs
           WHERE task_id = $1 AND ($2::text IS NULL OR status = $2)"#,
        task_id,
        status,
    )
    .fetch_one(pool)
    .await?;
    let items = select_runs!(
        "WHERE task_id = $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY created_at DESC, id LIMIT $3 OFFSET $4",
        task_id,
        status,
        page.limit(),
        page.offset(),
    )
    .fetch_all(pool)
    .await?;
    Ok((items, total))
}

/// Does the task have a run that is not finished?
pub async fn task_has_active(pool: &PgPool, task_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM runs WHERE task_id = $1 AND status = ANY($2)) AS "active!""#,
        task_id,
        &RunStatus::names(&RunStatus::ACTIVE),
    )
    .fetch_one(pool)
    .await
}

/// Every run in an active phase (for the reconciler), oldest first. The statuses are written
/// out as the partial indexes of active runs name them (a test compares those with
/// [`RunStatus::ACTIVE`]), so that every plan, a generic one too, reads `runs_owner_active`
/// instead of the whole table (migration 0012).
pub async fn active(pool: &PgPool) -> Result<Vec<Run>, sqlx::Error> {
    select_runs!(
        "WHERE status IN ('queued', 'dispatched', 'pending', 'running', 'stopping')
         ORDER BY queued_at"
    )
    .fetch_all(pool)
    .await
}

/// Which of `ids` are `stopping` (a worker stops their executions).
pub async fn stopping_among(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM runs WHERE id = ANY($1) AND status = $2",
        ids,
        Stopping.as_str(),
    )
    .fetch_all(pool)
    .await
}

/// What a transition records besides the new phase.
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// Who observed it (`api`, `worker:<name>`, `reconciler:<name>`).
    pub source: String,
    pub detail: String,
    pub reason: Option<Reason>,
    pub exit_code: Option<i32>,
    pub worker: Option<String>,
    pub executor: Option<String>,
    pub log_bytes: Option<i64>,
    pub log_truncated: bool,
}

impl Change {
    pub fn by(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            ..Self::default()
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }
}

/// Moves the run to `to` if the forward-only rule allows it from where it is; `true` when it
/// moved (and its event was written), `false` when it was already there or beyond.
pub async fn transition(
    pool: &PgPool,
    id: Uuid,
    to: RunStatus,
    change: &Change,
) -> Result<bool, sqlx::Error> {
    transition_from(pool, id, to.sources(), to, change).await
}

/// [`transition`] restricted to runs now in one of `from` (only `to`'s sources count): e.g.
/// failing a run only while it is still queued.
pub async fn transition_from(
    pool: &PgPool,
    id: Uuid,
    from: &[RunStatus],
    to: RunStatus,
    change: &Change,
) -> Result<bool, sqlx::Error> {
    Ok(move_run(pool, id, from, to, change).await?.is_some())
}

/// Moves the run through `steps` in order, in one transaction: one commit for phases that
/// follow each other at once (a local run whose code is at hand is `pending` only for as long
/// as its own commit would take). Each step keeps the forward-only rule and writes its own
/// event; `true` when the last step moved the run.
pub async fn transition_through(
    pool: &PgPool,
    id: Uuid,
    steps: &[(RunStatus, &Change)],
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut moved = false;
    for (to, change) in steps {
        moved = move_run(&mut *tx, id, to.sources(), *to, change)
            .await?
            .is_some();
    }
    tx.commit().await?;
    Ok(moved)
}

/// [`transition_from`]; when the run moved, `Some` of the pipeline run it is a step of.
async fn move_run(
    conn: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    from: &[RunStatus],
    to: RunStatus,
    change: &Change,
) -> Result<Option<Option<Uuid>>, sqlx::Error> {
    let sources: Vec<RunStatus> = from
        .iter()
        .copied()
        .filter(|s| to.sources().contains(s))
        .collect();
    let sources = RunStatus::names(&sources);
    let moved = sqlx::query!(
        "WITH moved AS (
            UPDATE runs SET
                status = $2,
                reason = coalesce($4, reason),
                exit_code = coalesce($5, exit_code),
                worker = coalesce($6, worker),
                executor = coalesce($7, executor),
                log_bytes = coalesce($8, log_bytes),
                log_truncated = log_truncated OR $9,
                dispatched_at = CASE WHEN $2 = $12 THEN now() ELSE dispatched_at END,
                started_at = CASE WHEN $2 = $13 THEN coalesce(started_at, now()) ELSE started_at END,
                finished_at = CASE WHEN $2 = ANY($14) THEN now() ELSE finished_at END
            WHERE id = $1 AND status = ANY($3)
            RETURNING id, pipeline_run_id),
         event AS (
            INSERT INTO run_events (run_id, phase, source, detail)
            SELECT id, $2, $10, $11 FROM moved)
         SELECT pipeline_run_id FROM moved",
        id,
        to.as_str(),
        &sources,
        change.reason.map(Reason::as_str),
        change.exit_code,
        change.worker.as_deref(),
        change.executor.as_deref(),
        change.log_bytes,
        change.log_truncated,
        change.source,
        change.detail,
        Dispatched.as_str(),
        Running.as_str(),
        &RunStatus::names(&RunStatus::TERMINAL),
    )
    .fetch_optional(conn)
    .await?;
    Ok(moved.map(|row| row.pipeline_run_id))
}

/// [`transition`] for every run of `ids` in one statement (one event each, with the same
/// `change`); returns the runs that moved.
pub async fn transition_many(
    pool: &PgPool,
    ids: &[Uuid],
    to: RunStatus,
    change: &Change,
) -> Result<Vec<Uuid>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sources = RunStatus::names(to.sources());
    sqlx::query_scalar!(
        "WITH moved AS (
            UPDATE runs SET
                status = $2,
                reason = coalesce($4, reason),
                exit_code = coalesce($5, exit_code),
                worker = coalesce($6, worker),
                executor = coalesce($7, executor),
                log_bytes = coalesce($8, log_bytes),
                log_truncated = log_truncated OR $9,
                dispatched_at = CASE WHEN $2 = $12 THEN now() ELSE dispatched_at END,
                started_at = CASE WHEN $2 = $13 THEN coalesce(started_at, now()) ELSE started_at END,
                finished_at = CASE WHEN $2 = ANY($14) THEN now() ELSE finished_at END
            WHERE id = ANY($1) AND status = ANY($3)
            RETURNING id)
         INSERT INTO run_events (run_id, phase, source, detail)
         SELECT id, $2, $10, $11 FROM moved RETURNING run_id AS \"run_id!\"",
        ids,
        to.as_str(),
        &sources,
        change.reason.map(Reason::as_str),
        change.exit_code,
        change.worker.as_deref(),
        change.executor.as_deref(),
        change.log_bytes,
        change.log_truncated,
        change.source,
        change.detail,
        Dispatched.as_str(),
        Running.as_str(),
        &RunStatus::names(&RunStatus::TERMINAL),
    )
    .fetch_all(pool)
    .await
}

/// How [`finish`] ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The phase it ended in.
    pub status: RunStatus,
    /// The pipeline run it is a step of, whose next stage its end may have queued.
    pub pipeline_run_id: Option<Uuid>,
}

/// Records the end of an execution: `to` (succeeded or failed) — unless the run is being
/// stopped, in which case stop wins and it ends `stopped`. Returns how it ended, or `None`
/// when it had already ended.
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    to: RunStatus,
    change: &Change,
) -> Result<Option<Ended>, sqlx::Error> {
    if let Some(pipeline_run_id) = move_run(pool, id, to.sources(), to, change).await? {
        return Ok(Some(Ended {
            status: to,
            pipeline_run_id,
        }));
    }
    let mut stopped = change.clone();
    stopped.reason = Some(Reason::StoppedByUser);
    if let Some(pipeline_run_id) = move_run(pool, id, Stopped.sources(), Stopped, &stopped).await? {
        return Ok(Some(Ended {
            status: Stopped,
            pipeline_run_id,
        }));
    }
    Ok(None)
}

/// Stop wins in every state: a queued run is canceled and never launches; a launched one
/// moves to `stopping` (its executor then deletes the execution). Idempotent: stopping a
/// stopping or finished run changes nothing. Returns the run as it is afterwards.
pub async fn request_stop(pool: &PgPool, id: Uuid, source: &str) -> Result<Run, Error> {
    for _ in 0..5 {
        let run = get(pool, id).await?.ok_or(Error::NotFound)?;
        let target = match run.status {
            Queued => Canceled,
            Dispatched | Pending | Running => Stopping,
            _ => return Ok(run),
        };
        let change = Change::by(source)
            .detail("stop requested")
            .reason(Reason::StoppedByUser);
        if transition(pool, id, target, &change).await? {
            return get(pool, id).await?.ok_or(Error::NotFound);
        }
        // The run moved under us (a worker dispatched it); look again.
    }
    get(pool, id).await?.ok_or(Error::NotFound)
}

/// Queues a run whose execution was lost (its worker died) for its next attempt, if it has
/// attempts left: one statement moves it from a launched phase back to `queued` with
/// `attempt + 1`, clears who launched it, and writes the `queued` event saying which attempt
/// this is and why. Returns the new attempt, or `None` when the run was not in a launched
/// phase or had no attempt left (then the caller ends it).
///
/// This is the one way back to `queued`: phases move forward within an attempt, and a new
/// attempt starts over from the same snapshot.
pub async fn reattempt(
    pool: &PgPool,
    id: Uuid,
    max_attempts: u32,
    source: &str,
    why: &str,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        "WITH moved AS (
            UPDATE runs SET status = $5, attempt = attempt + 1, worker = NULL,
                executor = NULL, dispatched_at = NULL, started_at = NULL
            WHERE id = $1 AND status = ANY($6) AND attempt < $2
            RETURNING id, attempt),
         event AS (
            INSERT INTO run_events (run_id, phase, source, detail)
            SELECT id, $5, $3, format('attempt %s of %s: %s', attempt, $2, $4::text) FROM moved)
         SELECT attempt FROM moved",
        id,
        max_attempts.max(1) as i32,
        source,
        why,
        Queued.as_str(),
        &RunStatus::names(&RunStatus::LAUNCHED),
    )
    .fetch_optional(pool)
    .await
}

/// A file the program left in `$OUTPUT_DIR`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OutputFile {
    pub path: String,
    pub size: i64,
}

pub async fn record_outputs(
    pool: &PgPool,
    id: Uuid,
    files: &[OutputFile],
) -> Result<(), sqlx::Error> {
    if files.is_empty() {
        return Ok(());
    }
    let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let sizes: Vec<i64> = files.iter().map(|f| f.size).collect();
    sqlx::query!(
        "INSERT INTO run_outputs (run_id, path, size)
         SELECT $1, path, size FROM UNNEST($2::text[], $3::bigint[]) AS o(path, size)
         ON CONFLICT (run_id, path) DO UPDATE SET size = EXCLUDED.size",
        id,
        &paths,
        &sizes,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn outputs(pool: &PgPool, id: Uuid) -> Result<Vec<OutputFile>, sqlx::Error> {
    sqlx::query_as!(
        OutputFile,
        "SELECT path, size FROM run_outputs WHERE run_id = $1 ORDER BY path",
        id,
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward_and_terminal_phases_are_final() {
        for to in RunStatus::ALL {
            for from in to.sources() {
                assert!(
                    !from.is_terminal(),
                    "{from:?} -> {to:?} leaves a terminal phase"
                );
                assert_ne!(*from, to);
            }
        }
        assert!(Queued.sources().is_empty());
        assert_eq!(Stopped.sources(), &[Stopping]);
        assert!(
            !Succeeded.sources().contains(&Stopping),
            "stop wins over a natural end"
        );
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
            assert_eq!(RunStatus::TERMINAL.contains(&status), status.is_terminal());
            assert_eq!(
                RunStatus::ACTIVE.contains(&status),
                !status.is_terminal(),
                "every phase is active or terminal"
            );
        }
        for status in RunStatus::LAUNCHED {
            assert!(RunStatus::ACTIVE.contains(&status));
        }
    }

    #[test]
    fn statuses_and_reasons_travel_as_the_same_strings_in_json_and_sql() {
        for status in RunStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::from(status.as_str())
            );
        }
        for reason in Reason::ALL {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::from(reason.as_str())
            );
        }
    }
}
