//! Operations: liveness, readiness (Postgres, S3 and Redis answer), Prometheus metrics, the
//! OpenAPI document.

use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::IntoResponse;
use fred::interfaces::ClientLike;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Json;
use crate::openapi::ServedDocument;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(render_metrics))
        .routes(routes!(openapi))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Postgres, the bucket and Redis answer.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = Problem)))]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    coderun_shared::db::ping(&state.db).await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: Postgres does not answer");
        ApiError::Unavailable("the database does not answer".into())
    })?;
    state.storage.check().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: object storage does not answer");
        ApiError::Unavailable("object storage does not answer".into())
    })?;
    let pong: Result<String, _> = state.redis.ping(None).await;
    pong.map_err(|e| {
        tracing::warn!(error = %e, "readiness: Redis does not answer");
        ApiError::Unavailable("Redis does not answer".into())
    })?;
    Ok(Json(Health { status: "ready" }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This document: the one built from the same declarations as the router that serves it.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "ops",
    responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi(Extension(document): Extension<ServedDocument>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.json(),
    )
}
