//! What can be chosen at submit: languages and specs (from configuration); datasets (from
//! Postgres) are [`crate::routes::datasets`]'.

use axum::extract::State;
use coderun_shared::config::Spec;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Problem;
use crate::extract::{Caller, Json};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_languages))
        .routes(routes!(list_specs))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LanguageInfo {
    /// The id tasks use, e.g. `python`.
    pub id: String,
    pub display_name: String,
    /// The main file a new task gets.
    pub main_file: String,
    /// The command a run uses unless the task or the submission names one.
    pub command: String,
    /// The container image runs of this language use.
    pub image: String,
    /// The language's version, e.g. `3.11`: what its runtime recipe (`infra/runtimes/`)
    /// declares, which every build of the runtime checks against what Debian installed.
    pub version: String,
    /// Its main libraries with their versions, e.g. `pandas 1.5`.
    pub libraries: Vec<String>,
}

/// The languages a task may be written in.
#[utoipa::path(get, path = "/api/v1/languages", tag = "catalogue", security(("bearer" = [])),
    responses((status = 200, body = Vec<LanguageInfo>), (status = 401, body = Problem)))]
pub async fn list_languages(
    State(state): State<AppState>,
    _caller: Caller,
) -> Json<Vec<LanguageInfo>> {
    Json(
        state
            .settings
            .languages
            .iter()
            .map(|(id, l)| LanguageInfo {
                id: id.clone(),
                display_name: l.display_name.clone(),
                main_file: l.main_file.clone(),
                command: l.command.clone(),
                image: l.image.clone(),
                version: l.version.clone(),
                libraries: l.libraries.clone(),
            })
            .collect(),
    )
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SpecInfo {
    pub name: String,
    /// True for the spec a run gets when it names none.
    pub default: bool,
    #[serde(flatten)]
    pub spec: Spec,
}

/// The resource presets a run may ask for.
#[utoipa::path(get, path = "/api/v1/specs", tag = "catalogue", security(("bearer" = [])),
    responses((status = 200, body = Vec<SpecInfo>), (status = 401, body = Problem)))]
pub async fn list_specs(State(state): State<AppState>, _caller: Caller) -> Json<Vec<SpecInfo>> {
    Json(
        state
            .settings
            .specs
            .iter()
            .map(|(name, spec)| SpecInfo {
                name: name.clone(),
                default: *name == state.settings.run.default_spec,
                spec: spec.clone(),
            })
            .collect(),
    )
}
