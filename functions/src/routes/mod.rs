//! The one route list. Each resource module declares its routes once, as `routes!(handler, …)`
//! over handlers annotated with `#[utoipa::path]`: the same declaration registers the handler
//! with axum and its operation with the OpenAPI document, so the router and the document cannot
//! drift apart. [`api`] merges them; [`crate::app`] serves the router and
//! [`crate::openapi`] finishes the document.

use coderun_shared::config::LimitSettings;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub mod auth;
pub mod catalogue;
pub mod datasets;
pub mod files;
pub mod ops;
pub mod pipelines;
pub mod runs;
pub mod tasks;
pub mod users;
pub mod webhooks;

/// Every route of the API with its OpenAPI operation; `limits` size the request bodies the
/// file routes take.
pub fn api(limits: &LimitSettings) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .merge(auth::router())
        .merge(users::router())
        .merge(tasks::router())
        .merge(files::router(limits))
        .merge(runs::router())
        .merge(catalogue::router())
        .merge(datasets::router(limits))
        .merge(pipelines::router())
        .merge(webhooks::router())
        .merge(ops::router())
}
