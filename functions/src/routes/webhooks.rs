//! Status callbacks: the caller's endpoints (create with a secret shown once, list, delete),
//! their deliveries with every attempt, and resending one. An endpoint is its owner's alone:
//! anyone else, staff included, gets 404. The rules live in `coderun_shared::webhooks`.

use axum::extract::State;
use axum::http::StatusCode;
use coderun_shared::domain::{Page, PageRequest};
use coderun_shared::webhooks::{
    self, Delivery, Endpoint, EndpointUrl, NewEndpoint, Sealer, parse_events,
};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiResult, Problem};
use crate::extract::{Caller, Json, Path, Query};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(resend_delivery))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An http or https URL without credentials.
    pub url: String,
    /// At least one of `run.status`, `pipeline_run.status`, `approval.requested`.
    pub events: Vec<String>,
}

/// A new endpoint with its signing secret, which no later answer shows.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_` and the base64 key that signs every delivery (Standard Webhooks).
    pub secret: String,
}

/// Register a callback endpoint; the answer holds its secret, shown only this once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    request_body = CreateWebhook,
    responses((status = 201, body = CreatedWebhook), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<CreatedWebhook>)> {
    let settings = &state.settings.webhooks;
    let new = NewEndpoint {
        owner_id: caller.id,
        url: EndpointUrl::parse(&body.url, settings)?,
        events: parse_events(&body.events)?,
    };
    let (endpoint, secret) = webhooks::create_endpoint(
        &state.db,
        new,
        settings.max_endpoints_per_user,
        &Sealer::from_settings(settings),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            endpoint,
            secret: secret.display(),
        }),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number, from 1.
    pub page: Option<i64>,
    /// Items per page, 1 to 100.
    pub per_page: Option<i64>,
}

/// The caller's callback endpoints, newest first.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = Page<Endpoint>), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<Page<Endpoint>>> {
    let page = PageRequest::parse(query.page, query.per_page, &state.settings.limits)?;
    let (items, total) = webhooks::list_endpoints(&state.db, caller.id, page).await?;
    Ok(Json(Page::new(items, page, total)))
}

/// Delete a callback endpoint with its deliveries.
#[utoipa::path(delete, path = "/api/v1/webhooks/{webhook_id}", tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(webhook_id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    webhooks::delete_endpoint(&state.db, caller.id, webhook_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The endpoint's deliveries, newest first, each with every attempt (time, status code or
/// error, duration, next retry).
#[utoipa::path(get, path = "/api/v1/webhooks/{webhook_id}/deliveries", tag = "webhooks",
    security(("bearer" = [])), params(("webhook_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<Delivery>), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(webhook_id): Path<Uuid>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<Page<Delivery>>> {
    let page = PageRequest::parse(query.page, query.per_page, &state.settings.limits)?;
    let (items, total) = webhooks::list_deliveries(&state.db, caller.id, webhook_id, page).await?;
    Ok(Json(Page::new(items, page, total)))
}

/// Send a delivery again now, with a fresh schedule of retries (the same `webhook-id`).
#[utoipa::path(post, path = "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend",
    tag = "webhooks", security(("bearer" = [])),
    params(("webhook_id" = Uuid, Path), ("delivery_id" = Uuid, Path)),
    responses((status = 202), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn resend_delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path((webhook_id, delivery_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    webhooks::resend(&state.db, caller.id, webhook_id, delivery_id).await?;
    Ok(StatusCode::ACCEPTED)
}
