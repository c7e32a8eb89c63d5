//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{auth, catalogue, files, ops, runs, tasks, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "coderun", description = "Keep code tasks, edit their files, run them in sandboxes."),
    paths(
        auth::login, auth::me, auth::create_user,
        users::list_users, users::create_users,
        tasks::create_task, tasks::list_tasks, tasks::get_task, tasks::update_task, tasks::delete_task,
        files::read_file, files::save_file, files::delete_path, files::batch_files, files::move_path,
        files::download_archive,
        runs::submit_run, runs::list_runs, runs::get_run, runs::stop_run, runs::retry_run,
        runs::get_log, runs::stream_log, runs::download_log, runs::list_outputs,
        catalogue::list_languages, catalogue::list_specs, catalogue::list_datasets,
        ops::healthz, ops::readyz, ops::render_metrics, ops::openapi,
    ),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as `coderun-functions openapi` prints it (and `web/openapi.json` holds it):
/// pretty JSON ending with a newline.
pub fn pretty_json() -> serde_json::Result<String> {
    let mut text = serde_json::to_string_pretty(&document())?;
    text.push('\n');
    Ok(text)
}
