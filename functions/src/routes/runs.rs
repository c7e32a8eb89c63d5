//! Runs: submit a task as a run, list and read runs, stop and retry them, read their log (by
//! page, as a stream of server-sent events, or as a download) and their output files.
//!
//! Submit, retry and stop are the run lifecycle's ([`coderun_shared::lifecycle`], which keeps
//! their steps and their order); these handlers parse the request, call it and answer. A run
//! is visible to its owner and readable by teachers and admins. Log streams are capped per
//! user (fleet-wide) and per process.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use coderun_shared::domain::{Page, PageRequest};
use coderun_shared::lifecycle::{self, Accepted, Submission, submit};
use coderun_shared::livelog::StreamSlots;
use coderun_shared::logfile;
use coderun_shared::runs::{self, OutputFile, Reason, Run, RunEvent, RunStatus};
use futures::StreamExt;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, Json, Path, Query};
use crate::idempotency;
use crate::routes::tasks::{Access, authorize};
use crate::state::AppState;

pub use coderun_shared::lifecycle::submit::{MAX_DATASETS, MAX_REMARKS_CHARS};
/// How long a caller refused a log stream (too many open) is told to wait.
const STREAMS_RETRY_AFTER_SECONDS: u64 = 5;
/// How often an open log stream renews its slot (well within [`StreamSlots::TTL_MS`]).
const STREAM_SLOT_RENEW: Duration = Duration::from_secs(20);
/// How often a log stream looks for new lines while the run is active.
const STREAM_POLL: Duration = Duration::from_millis(200);
/// How often a log stream looks at the run's status (a Postgres read).
const STREAM_STATUS_EVERY: Duration = Duration::from_secs(1);
/// A log stream with nothing to say sends a comment this often, so proxies keep it open.
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Lines read from the live log per round trip while streaming.
const STREAM_BATCH: u64 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_runs, submit_run))
        .routes(routes!(get_run))
        .routes(routes!(stop_run))
        .routes(routes!(retry_run))
        .routes(routes!(get_log))
        .routes(routes!(stream_log))
        .routes(routes!(download_log))
        .routes(routes!(list_outputs))
}

/// Loads a run the caller may use, by the same rule as tasks: someone else's run is a 404,
/// except that teachers and admins may read it, and are told 403 on a write.
pub async fn authorize_run(
    state: &AppState,
    caller: &Caller,
    run_id: Uuid,
    access: Access,
) -> ApiResult<Run> {
    Ok(lifecycle::access::run(&state.db, &caller.actor(), run_id, access).await?)
}

/// A run with its phase history, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub events: Vec<RunEvent>,
}

async fn detail(state: &AppState, run: Run) -> ApiResult<RunDetail> {
    let events = runs::events(&state.db, run.id).await?;
    Ok(RunDetail { run, events })
}

/// `202 Accepted` with the run and its `Location` (and `Idempotent-Replayed: true` when an
/// earlier request created it).
async fn accepted(state: &AppState, accepted: Accepted) -> ApiResult<Response> {
    let Accepted {
        run,
        replayed,
        events,
    } = accepted;
    let id = run.id;
    // A new run's history is the event its commit wrote: nothing is read back.
    let run = if events.is_empty() {
        detail(state, run).await?
    } else {
        RunDetail { run, events }
    };
    if replayed {
        return idempotency::replayed(run, id);
    }
    metrics::counter!("runs_submitted_total").increment(1);
    let location = HeaderValue::from_str(&format!("/api/v1/runs/{id}"))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(run),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRun {
    /// A shell command run by `sh -c`; by default the task's command, else the language's.
    pub command: Option<String>,
    /// A note kept with the run (at most 2000 characters).
    pub remarks: Option<String>,
    /// One of `GET /api/v1/specs`; by default the configured default spec.
    pub spec: Option<String>,
    /// Datasets (`GET /api/v1/datasets`) mounted read-only under `$DATA_DIR/{name}`; at most 8.
    pub datasets: Option<Vec<String>>,
}

/// A JSON body that may also be absent: an empty body means `T::default()`, so
/// `POST …/runs` with no body submits with every default.
pub(crate) fn optional_json<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let body = body?;
    if body.is_empty() {
        return Ok(T::default());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let essence = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::UnsupportedMediaType(
            "expected no body, or a body with Content-Type: application/json".into(),
        ));
    }
    Ok(axum::Json::<T>::from_bytes(&body)?.0)
}

impl From<SubmitRun> for submit::Request {
    fn from(body: SubmitRun) -> Self {
        Self {
            command: body.command,
            remarks: body.remarks,
            spec: body.spec,
            datasets: body.datasets,
        }
    }
}

/// Submit the task's files as a run: snapshot, commit, queue.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/runs", tag = "runs", security(("bearer" = [])),
    params(("task_id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header,
            description = "repeating the request with the same key answers the run the first one created")),
    request_body(content = SubmitRun, description = "may be omitted (no body): every field has a default"),
    responses((status = 202, body = RunDetail, headers(("Location" = String, description = "the run's URL"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem),
        (status = 429, body = Problem, headers(("Retry-After" = u64, description = "seconds")))))]
pub async fn submit_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<Uuid>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let idempotency_key = idempotency::key_from(&headers)?;
    let body: SubmitRun = optional_json(&headers, body)?;
    let submission = Submission::check(&state.settings, body.into())?;
    let run = state
        .lifecycle()
        .submit(&caller.actor(), task_id, submission, idempotency_key)
        .await?;
    accepted(&state, run).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRunsQuery {
    /// Page number, from 1.
    pub page: Option<i64>,
    /// Items per page, 1 to 100.
    pub per_page: Option<i64>,
    /// Only runs in this phase (`queued`, `running`, `succeeded` …).
    pub status: Option<String>,
}

/// The task's runs, newest first.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/runs", tag = "runs", security(("bearer" = [])),
    params(("task_id" = Uuid, Path), ListRunsQuery),
    responses((status = 200, body = Page<Run>), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem)))]
pub async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<Uuid>,
    Query(query): Query<ListRunsQuery>,
) -> ApiResult<Json<Page<Run>>> {
    let page = PageRequest::parse(query.page, query.per_page, &state.settings.limits)?;
    let status = query
        .status
        .as_deref()
        .map(|raw| {
            RunStatus::parse(raw).ok_or_else(|| {
                let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::BadRequest(format!(
                    "unknown status `{raw}`; known statuses: {}",
                    known.join(", ")
                ))
            })
        })
        .transpose()?;
    authorize(&state, &caller, task_id, Access::Read).await?;
    let (items, total) = runs::list(&state.db, task_id, status, page).await?;
    Ok(Json(Page::new(items, page, total)))
}

/// A run: status, reason, exit code, timings, spec and its phase history.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path)),
    responses((status = 200, body = RunDetail), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<Uuid>,
) -> ApiResult<Json<RunDetail>> {
    let run = authorize_run(&state, &caller, run_id, Access::Read).await?;
    Ok(Json(detail(&state, run).await?))
}

/// Stop a run: a queued run is canceled and never launches, a launched one moves to `stopping`
/// and ends `stopped`. Stopping a run that is stopping or finished changes nothing.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/stop", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path)),
    responses((status = 200, body = RunDetail), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub async fn stop_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<Uuid>,
) -> ApiResult<Json<RunDetail>> {
    let run = state.lifecycle().stop(&caller.actor(), run_id).await?;
    Ok(Json(detail(&state, run).await?))
}

/// A new run of the same code snapshot, command, spec, datasets and remarks (finished runs only).
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/retry", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header,
            description = "repeating the request with the same key answers the run the first one created")),
    responses((status = 202, body = RunDetail, headers(("Location" = String, description = "the new run's URL"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
        (status = 429, body = Problem, headers(("Retry-After" = u64, description = "seconds")))))]
pub async fn retry_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let idempotency_key = idempotency::key_from(&headers)?;
    let run = state
        .lifecycle()
        .retry(&caller.actor(), run_id, idempotency_key)
        .await?;
    accepted(&state, run).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Page number, from 1.
    pub page: Option<i64>,
}

/// One page of a run's log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogPage {
    pub page: u64,
    /// At least 1: page 1 exists (empty) before the run wrote anything.
    pub total_pages: u64,
    pub total_lines: u64,
    pub lines: Vec<String>,
    /// The run has ended and this is its whole log: it will not change any more.
    pub complete: bool,
}

/// A finished run that never reached an executor (canceled while queued, dead-lettered) has no
/// log and never will.
async fn never_launched(state: &AppState, run_id: Uuid) -> ApiResult<bool> {
    let events = runs::events(&state.db, run_id).await?;
    Ok(!events.iter().any(|e| {
        matches!(
            e.phase,
            RunStatus::Dispatched | RunStatus::Pending | RunStatus::Running | RunStatus::Stopping
        )
    }))
}

/// A page of the log: live from Redis while the run is active, from `log.txt` once it ended.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/log", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path), LogQuery),
    responses((status = 200, body = LogPage), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem)))]
pub async fn get_log(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<Uuid>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    let page = query.page.unwrap_or(1);
    if page < 1 {
        return Err(ApiError::BadRequest("page must be at least 1".into()));
    }
    let page = page as u64;
    let run = authorize_run(&state, &caller, run_id, Access::Read).await?;
    let per_page = u64::from(state.settings.runs.log_page_lines.max(1));
    let first = (page - 1).saturating_mul(per_page).saturating_add(1);
    let last = first.saturating_add(per_page - 1);
    let total_pages = |total: u64| total.div_ceil(per_page).max(1);

    if run.status.is_terminal()
        && let Some(stored) = logfile::read(&state.storage, run.id, first, per_page).await?
    {
        return Ok(Json(LogPage {
            page,
            total_pages: total_pages(stored.total),
            total_lines: stored.total,
            lines: stored.lines,
            complete: true,
        }));
    }
    if run.purged_at.is_some() {
        // The retention removed it: nothing more will ever be shown.
        return Ok(Json(LogPage {
            page,
            total_pages: 1,
            total_lines: 0,
            lines: Vec::new(),
            complete: true,
        }));
    }
    let total = state.live_log.len(run.id).await?;
    let lines = if first <= total {
        state.live_log.range(run.id, first, last.min(total)).await?
    } else {
        Vec::new()
    };
    let complete = run.status.is_terminal() && never_launched(&state, run.id).await?;
    Ok(Json(LogPage {
        page,
        total_pages: total_pages(total),
        total_lines: total,
        lines,
        complete,
    }))
}

/// What the `end` event says.
#[derive(Serialize)]
struct EndOfLog {
    status: RunStatus,
    reason: Option<Reason>,
    exit_code: Option<i32>,
}

/// Follows one run's log for a stream: live lines while the run is active, then the rest from
/// `log.txt`, then the end.
struct Tail {
    state: AppState,
    run_id: Uuid,
    /// The stream's places in the per-process and per-user caps, given back on drop.
    slot: StreamSlot,
    slot_renewed: Instant,
    /// The next line to send, from 1.
    next: u64,
    status_checked: Option<Instant>,
    last_sent: Instant,
    done: bool,
}

impl Tail {
    /// The next piece of the stream, or `None` once the end has been sent (or the run is gone).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            if self.slot_renewed.elapsed() >= STREAM_SLOT_RENEW {
                self.slot_renewed = Instant::now();
                self.slot.renew().await;
            }
            if self
                .status_checked
                .is_none_or(|t| t.elapsed() >= STREAM_STATUS_EVERY)
            {
                self.status_checked = Some(Instant::now());
                match runs::get(&self.state.db, self.run_id).await {
                    Ok(None) => {
                        // Deleted with its task: nothing more will come.
                        self.done = true;
                        return None;
                    }
                    Ok(Some(run)) if run.status.is_terminal() => {
                        self.done = true;
                        return Some(self.finish(&run).await);
                    }
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::warn!(run_id = %self.run_id, error = %e, "log stream: cannot read the run")
                    }
                }
            }
            match self.live_batch().await {
                Ok(lines) if !lines.is_empty() => return Some(self.frame(lines)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(run_id = %self.run_id, error = %e, "log stream: cannot read the live log")
                }
            }
            if self.last_sent.elapsed() >= STREAM_KEEP_ALIVE {
                self.last_sent = Instant::now();
                return Some(Bytes::from_static(b": keep-alive\n\n"));
            }
            tokio::time::sleep(STREAM_POLL).await;
        }
    }

    async fn live_batch(&self) -> Result<Vec<String>, fred::error::Error> {
        self.state
            .live_log
            .range(
                self.run_id,
                self.next,
                self.next.saturating_add(STREAM_BATCH - 1),
            )
            .await
    }

    /// The lines not sent yet (from `log.txt` when it is stored, else what the live log still
    /// holds), then the `end` event.
    async fn finish(&mut self, run: &Run) -> Bytes {
        let mut out = Vec::new();
        match logfile::read(&self.state.storage, self.run_id, self.next, u64::MAX).await {
            Ok(Some(rest)) => {
                out.extend_from_slice(&self.frame(rest.lines));
            }
            stored => {
                if let Err(e) = stored {
                    tracing::warn!(run_id = %self.run_id, error = %e, "log stream: cannot read log.txt");
                }
                while let Ok(lines) = self.live_batch().await {
                    if lines.is_empty() {
                        break;
                    }
                    out.extend_from_slice(&self.frame(lines));
                }
            }
        }
        let end = EndOfLog {
            status: run.status,
            reason: run.reason,
            exit_code: run.exit_code,
        };
        out.extend_from_slice(b"event: end\ndata: ");
        out.extend_from_slice(&serde_json::to_vec(&end).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// `lines` as `line` events numbered from `next` (the number is the event id, so a client
    /// reconnecting with `Last-Event-ID` resumes after it).
    fn frame(&mut self, lines: Vec<String>) -> Bytes {
        let mut out = String::new();
        for line in lines {
            out.push_str("event: line\nid: ");
            out.push_str(&self.next.to_string());
            out.push('\n');
            // SSE cannot carry a CR or LF inside a field: a CRLF ending is dropped, and any
            // other break becomes a second `data` field (the client joins them with `\n`). An
            // empty line still gets its (empty) `data` field, so the event is delivered.
            let line = line.strip_suffix('\r').unwrap_or(&line);
            for part in line.split(['\r', '\n']) {
                out.push_str("data: ");
                out.push_str(part);
                out.push('\n');
            }
            out.push('\n');
            self.next += 1;
        }
        self.last_sent = Instant::now();
        Bytes::from(out)
    }
}

/// One server-sent event of a log stream, as the OpenAPI document describes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LogStreamEvent {
    /// `line` (a line of the log) or `end` (the run ended; the stream closes after it).
    #[schema(pattern = "^(line|end)$")]
    event: String,
    /// A `line`'s text, or the `end`'s JSON `{status, reason, exit_code}`.
    data: String,
    /// A `line`'s number, from 1 (send it back as `Last-Event-ID` to resume after it).
    id: Option<String>,
}

/// The log as server-sent events: `line` events (id = line number) as it grows, then one `end`
/// event with `{status, reason, exit_code}`; the stream closes after it. Send `Last-Event-ID`
/// to resume after a line.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/log/stream", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path),
        ("Last-Event-ID" = Option<String>, Header,
            description = "resume after this line number; any other value starts from the first line")),
    responses((status = 200, content_type = "text/event-stream", body = LogStreamEvent),
        (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 429, body = Problem, headers(("Retry-After" = u64, description = "seconds")))))]
pub async fn stream_log(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize_run(&state, &caller, run_id, Access::Read).await?;
    let slot = StreamSlot::take(&state, caller.id).await?;
    let after: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let tail = Tail {
        state,
        run_id,
        slot,
        slot_renewed: Instant::now(),
        next: after.saturating_add(1),
        status_checked: None,
        last_sent: Instant::now(),
        done: false,
    };
    let stream = futures::stream::unfold(tail, |mut tail| async move {
        let chunk = tail.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), tail))
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(stream.boxed()),
    )
        .into_response())
}

/// A redirect (302) to a time-limited download URL of the run's whole log, once it is stored.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/log/download", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path)),
    responses((status = 302, headers(("Location" = String, description = "a presigned URL of log.txt"))),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn download_log(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<Uuid>,
) -> ApiResult<Response> {
    let run = authorize_run(&state, &caller, run_id, Access::Read).await?;
    let key = run.objects().log();
    if !state.storage.exists(&key).await? {
        return Err(ApiError::NotFound(if run.purged_at.is_some() {
            "this run's log was removed by the retention".into()
        } else if run.status.is_terminal() {
            "this run has no stored log".into()
        } else {
            "the log is stored when the run ends; read it live with /log or /log/stream".into()
        }));
    }
    let url = state.storage.presigned_get(&key).await?;
    let location = HeaderValue::from_str(&url).map_err(|e| ApiError::Internal(e.into()))?;
    Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// A file the program wrote under `$OUTPUT_DIR`, with a time-limited download URL.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OutputLink {
    pub path: String,
    pub size: i64,
    pub url: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListOutputsQuery {
    /// Page number, from 1.
    pub page: Option<i64>,
    /// Items per page, 1 to 100.
    pub per_page: Option<i64>,
}

/// The run's output files by path, each with a presigned download URL.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/outputs", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path), ListOutputsQuery),
    responses((status = 200, body = Page<OutputLink>), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn list_outputs(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<Uuid>,
    Query(query): Query<ListOutputsQuery>,
) -> ApiResult<Json<Page<OutputLink>>> {
    let page = PageRequest::parse(query.page, query.per_page, &state.settings.limits)?;
    let run = authorize_run(&state, &caller, run_id, Access::Read).await?;
    let all: Vec<OutputFile> = runs::outputs(&state.db, run.id).await?;
    let total = all.len() as i64;
    let mut items = Vec::new();
    for file in all
        .into_iter()
        .skip(page.offset() as usize)
        .take(page.limit() as usize)
    {
        let url = state
            .storage
            .presigned_get(&run.objects().output(&file.path))
            .await?;
        items.push(OutputLink {
            path: file.path,
            size: file.size,
            url,
        });
    }
    Ok(Json(Page::new(items, page, total)))
}

/// A log stream's place in the caps: one of the process's `log_streams_per_process` permits
/// and one of the user's `log_streams_per_user` slots in Redis. Dropping it gives both back
/// (the Redis slot also expires by itself if this process dies).
struct StreamSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    slots: StreamSlots,
    user: Uuid,
    id: String,
}

impl StreamSlot {
    async fn take(state: &AppState, user: Uuid) -> ApiResult<Self> {
        let full = |detail: String| ApiError::TooManyRequests {
            detail,
            retry_after: STREAMS_RETRY_AFTER_SECONDS,
        };
        let permit = state.log_streams.clone().try_acquire_owned().map_err(|_| {
            full(
                "this server follows as many live logs as it can; try again shortly, or read \
                  the log by pages"
                    .into(),
            )
        })?;
        let id = Uuid::new_v4().simple().to_string();
        if !state.stream_slots.acquire(user, &id).await? {
            return Err(full(format!(
                "you already follow {} live logs; close one (another tab?) and try again",
                state.settings.runs.log_streams_per_user
            )));
        }
        Ok(Self {
            _permit: permit,
            slots: state.stream_slots.clone(),
            user,
            id,
        })
    }

    async fn renew(&self) {
        if let Err(e) = self.slots.acquire(self.user, &self.id).await {
            tracing::warn!(error = %e, "cannot renew a log stream's slot");
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let (slots, user, id) = (self.slots.clone(), self.user, std::mem::take(&mut self.id));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = slots.release(user, &id).await {
                    tracing::warn!(error = %e, "cannot release a log stream's slot; it expires");
                }
            });
        }
    }
}
