//! Pipelines and their runs: define stages of steps (each update a new version), start, list
//! and read pipeline runs with their stage/step grid, stop and retry them, and approve or
//! reject an approval gate (staff).
//!
//! The rules are [`coderun_shared::pipelines`]'; these handlers parse, call and answer. A
//! pipeline and its runs are visible to the owner and readable by teachers and admins.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use coderun_shared::domain::{Page, PageRequest};
use coderun_shared::pipelines::{
    self, Definition, Params, Pipeline, PipelineRun, PipelineStatus, StageDefinition,
};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, Json, Path, Query};
use crate::routes::runs::optional_json;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_pipelines, create_pipeline))
        .routes(routes!(get_pipeline, update_pipeline, delete_pipeline))
        .routes(routes!(list_pipeline_runs, start_pipeline_run))
        .routes(routes!(get_pipeline_run))
        .routes(routes!(stop_pipeline_run))
        .routes(routes!(retry_pipeline_run))
        .routes(routes!(approve_stage))
        .routes(routes!(reject_stage))
}

/// A pipeline to create: its name, parameters with defaults, and stages.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePipeline {
    pub name: String,
    #[serde(default)]
    pub params: Params,
    pub stages: Vec<StageDefinition>,
}

/// A change of a pipeline; what is left out stays. Every change makes a new version.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePipeline {
    pub name: Option<String>,
    pub params: Option<Params>,
    pub stages: Option<Vec<StageDefinition>>,
}

/// Define a pipeline: ordered stages whose steps run in parallel, each a task of the caller's.
#[utoipa::path(post, path = "/api/v1/pipelines", tag = "pipelines", security(("bearer" = [])),
    request_body = CreatePipeline,
    responses((status = 201, body = Pipeline), (status = 401, body = Problem),
        (status = 422, body = Problem)))]
pub async fn create_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreatePipeline>,
) -> ApiResult<(StatusCode, Json<Pipeline>)> {
    let definition = Definition {
        params: body.params,
        stages: body.stages,
    };
    let pipeline = pipelines::create(
        &state.db,
        &state.settings,
        caller.id,
        &body.name,
        definition,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(pipeline)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListPipelinesQuery {
    /// Page number, from 1.
    pub page: Option<i64>,
    /// Items per page.
    pub per_page: Option<i64>,
    /// Staff: another user's pipelines.
    pub owner: Option<Uuid>,
}

/// The caller's pipelines (staff may name an `owner`), newest change first.
#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines", security(("bearer" = [])),
    params(ListPipelinesQuery),
    responses((status = 200, body = Page<Pipeline>), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_pipelines(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListPipelinesQuery>,
) -> ApiResult<Json<Page<Pipeline>>> {
    let page = PageRequest::parse(query.page, query.per_page, &state.settings.limits)?;
    let owner = match query.owner {
        Some(owner) if owner != caller.id && !caller.role.reads_everything() => {
            return Err(ApiError::Forbidden(
                "only teachers and admins may list other users' pipelines",
            ));
        }
        Some(owner) => owner,
        None => caller.id,
    };
    let (items, total) = pipelines::list(&state.db, Some(owner), page).await?;
    Ok(Json(Page::new(items, page, total)))
}

/// A pipeline: its newest version.
#[utoipa::path(get, path = "/api/v1/pipelines/{pipeline_id}", tag = "pipelines",
    security(("bearer" = [])), params(("pipeline_id" = Uuid, Path)),
    responses((status = 200, body = Pipeline), (status = 401, body = Problem),
        (status = 404, body = Problem)))]
pub async fn get_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Path(pipeline_id): Path<Uuid>,
) -> ApiResult<Json<Pipeline>> {
    let pipeline = pipelines::authorize(&state.db, &caller.actor(), pipeline_id, false).await?;
    Ok(Json(pipeline))
}

/// Change a pipeline: a new version; runs keep the version they started with.
#[utoipa::path(patch, path = "/api/v1/pipelines/{pipeline_id}", tag = "pipelines",
    security(("bearer" = [])), params(("pipeline_id" = Uuid, Path)),
    request_body = UpdatePipeline,
    responses((status = 200, body = Pipeline), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
pub async fn update_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Path(pipeline_id): Path<Uuid>,
    Json(body): Json<UpdatePipeline>,
) -> ApiResult<Json<Pipeline>> {
    let pipeline = pipelines::authorize(&state.db, &caller.actor(), pipeline_id, true).await?;
    let name = body.name.unwrap_or_else(|| pipeline.name.clone());
    let definition = Definition {
        params: body
            .params
            .unwrap_or_else(|| pipeline.definition.params.clone()),
        stages: body
            .stages
            .unwrap_or_else(|| pipeline.definition.stages.clone()),
    };
    let updated =
        pipelines::update(&state.db, &state.settings, &pipeline, &name, definition).await?;
    Ok(Json(updated))
}

/// Delete a pipeline with its versions and runs (the step runs stay); 409 while a run is active.
#[utoipa::path(delete, path = "/api/v1/pipelines/{pipeline_id}", tag = "pipelines",
    security(("bearer" = [])), params(("pipeline_id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Path(pipeline_id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    pipelines::authorize(&state.db, &caller.actor(), pipeline_id, true).await?;
    pipelines::delete(&state.db, pipeline_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Values for a pipeline run's parameters.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartPipelineRun {
    /// Values of the pipeline's parameters (`{NAME: value}`); the defaults fill in the rest.
    #[serde(default)]
    pub params: Option<BTreeMap<String, String>>,
}

/// Start a run of the pipeline: snapshot every step's task, queue the first stage.
#[utoipa::path(post, path = "/api/v1/pipelines/{pipeline_id}/runs", tag = "pipelines",
    security(("bearer" = [])), params(("pipeline_id" = Uuid, Path)),
    request_body(content = StartPipelineRun, description = "may be omitted: every parameter keeps its default"),
    responses((status = 202, body = PipelineRun), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn start_pipeline_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(pipeline_id): Path<Uuid>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<PipelineRun>)> {
    let body: StartPipelineRun = optional_json(&headers, body)?;
    let run = state
        .lifecycle()
        .start_pipeline(
            &caller.actor(),
            pipeline_id,
            body.params.unwrap_or_default(),
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListPipelineRunsQuery {
    /// Page number, from 1.
    pub page: Option<i64>,
    /// Items per page.
    pub per_page: Option<i64>,
    /// Only runs in this status.
    #[param(value_type = Option<PipelineStatus>)]
    pub status: Option<String>,
}

/// The pipeline's runs, newest first.
#[utoipa::path(get, path = "/api/v1/pipelines/{pipeline_id}/runs", tag = "pipelines",
    security(("bearer" = [])), params(("pipeline_id" = Uuid, Path), ListPipelineRunsQuery),
    responses((status = 200, body = Page<PipelineRun>), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn list_pipeline_runs(
    State(state): State<AppState>,
    caller: Caller,
    Path(pipeline_id): Path<Uuid>,
    Query(query): Query<ListPipelineRunsQuery>,
) -> ApiResult<Json<Page<PipelineRun>>> {
    let page = PageRequest::parse(query.page, query.per_page, &state.settings.limits)?;
    let status = query
        .status
        .as_deref()
        .map(|raw| {
            PipelineStatus::parse(raw).ok_or_else(|| {
                let known: Vec<&str> = PipelineStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::BadRequest(format!(
                    "unknown status `{raw}`; known statuses: {}",
                    known.join(", ")
                ))
            })
        })
        .transpose()?;
    pipelines::authorize(&state.db, &caller.actor(), pipeline_id, false).await?;
    let (items, total) = pipelines::list_runs(&state.db, pipeline_id, status, page).await?;
    Ok(Json(Page::new(items, page, total)))
}

/// A pipeline run: status and the stage/step grid, each step with its run.
#[utoipa::path(get, path = "/api/v1/pipeline-runs/{pipeline_run_id}", tag = "pipelines",
    security(("bearer" = [])), params(("pipeline_run_id" = Uuid, Path)),
    responses((status = 200, body = PipelineRun), (status = 401, body = Problem),
        (status = 404, body = Problem)))]
pub async fn get_pipeline_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(pipeline_run_id): Path<Uuid>,
) -> ApiResult<Json<PipelineRun>> {
    let run = pipelines::authorize_run(&state.db, &caller.actor(), pipeline_run_id, false).await?;
    Ok(Json(run))
}

/// Stop a pipeline run: active steps are stopped, the rest canceled.
#[utoipa::path(post, path = "/api/v1/pipeline-runs/{pipeline_run_id}/stop", tag = "pipelines",
    security(("bearer" = [])), params(("pipeline_run_id" = Uuid, Path)),
    responses((status = 200, body = PipelineRun), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn stop_pipeline_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(pipeline_run_id): Path<Uuid>,
) -> ApiResult<Json<PipelineRun>> {
    let run = state
        .lifecycle()
        .stop_pipeline_run(&caller.actor(), pipeline_run_id)
        .await?;
    Ok(Json(run))
}

/// A new pipeline run reusing the succeeded steps' runs and rerunning the others.
#[utoipa::path(post, path = "/api/v1/pipeline-runs/{pipeline_run_id}/retry", tag = "pipelines",
    security(("bearer" = [])), params(("pipeline_run_id" = Uuid, Path)),
    responses((status = 202, body = PipelineRun), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn retry_pipeline_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(pipeline_run_id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<PipelineRun>)> {
    let run = state
        .lifecycle()
        .retry_pipeline_run(&caller.actor(), pipeline_run_id)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// A decision on an approval gate.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageDecision {
    /// Kept with the decision (at most 2000 characters).
    pub comment: Option<String>,
}

/// Staff: approve the stage the pipeline run waits at (`stage`: its name or number from 1).
#[utoipa::path(post, path = "/api/v1/pipeline-runs/{pipeline_run_id}/stages/{stage}/approve",
    tag = "pipelines", security(("bearer" = [])),
    params(("pipeline_run_id" = Uuid, Path), ("stage" = String, Path)),
    request_body(content = StageDecision, description = "may be omitted"),
    responses((status = 200, body = PipelineRun), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn approve_stage(
    State(state): State<AppState>,
    caller: Caller,
    Path((pipeline_run_id, stage)): Path<(Uuid, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PipelineRun>> {
    let body: StageDecision = optional_json(&headers, body)?;
    let run = state
        .lifecycle()
        .decide_stage(&caller.actor(), pipeline_run_id, &stage, true, body.comment)
        .await?;
    Ok(Json(run))
}

/// Staff: reject the stage the pipeline run waits at; the pipeline run fails.
#[utoipa::path(post, path = "/api/v1/pipeline-runs/{pipeline_run_id}/stages/{stage}/reject",
    tag = "pipelines", security(("bearer" = [])),
    params(("pipeline_run_id" = Uuid, Path), ("stage" = String, Path)),
    request_body(content = StageDecision, description = "may be omitted"),
    responses((status = 200, body = PipelineRun), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn reject_stage(
    State(state): State<AppState>,
    caller: Caller,
    Path((pipeline_run_id, stage)): Path<(Uuid, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PipelineRun>> {
    let body: StageDecision = optional_json(&headers, body)?;
    let run = state
        .lifecycle()
        .decide_stage(
            &caller.actor(),
            pipeline_run_id,
            &stage,
            false,
            body.comment,
        )
        .await?;
    Ok(Json(run))
}
