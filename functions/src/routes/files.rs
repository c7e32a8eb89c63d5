//! A task's files: read, save, delete one; batch changes; move; download all as a zip.
//! Paths arrive in the URL (`{*path}`, percent-decoded) or in JSON and are parsed into
//! [`FilePath`] before anything else happens.

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use coderun_shared::config::LimitSettings;
use coderun_shared::domain::FilePath;
use coderun_shared::files::{self, FileInfo, Replaced};
use coderun_shared::lifecycle::{self, access};
use coderun_shared::{archive, objects};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, Json, Path};
use crate::routes::tasks::{Access, TaskDetail, authorize};
use crate::state::AppState;

pub fn router(limits: &LimitSettings) -> OpenApiRouter<AppState> {
    let file_limit = usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX);
    let batch_limit = usize::try_from(limits.max_batch_bytes).unwrap_or(usize::MAX);
    OpenApiRouter::new()
        .routes(routes!(read_file, save_file, delete_path).layer(DefaultBodyLimit::max(file_limit)))
        .routes(routes!(batch_files).layer(DefaultBodyLimit::max(batch_limit)))
        .routes(routes!(move_path))
        .routes(routes!(download_archive))
}

fn parse_path(raw: &str, state: &AppState) -> ApiResult<FilePath> {
    Ok(FilePath::parse(raw, &state.settings.limits)?)
}

fn too_large(limits: &LimitSettings) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "a file holds at most {} bytes",
        limits.max_file_bytes
    ))
}

/// A file's content is text: Postgres keeps no NUL character in text, so one is refused here
/// rather than failing the insert.
fn check_text(content: &str) -> ApiResult<()> {
    if content.contains('\0') {
        return Err(ApiError::Unprocessable(
            "file content must be text without NUL characters".into(),
        ));
    }
    Ok(())
}

/// One file's content, as `text/plain; charset=utf-8`.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/files/{*path}", tag = "files", security(("bearer" = [])),
    params(("task_id" = Uuid, Path), ("path" = String, Path, description = "the file's path; may contain '/'")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn read_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((task_id, path)): Path<(Uuid, String)>,
) -> ApiResult<Response> {
    let path = parse_path(&path, &state)?;
    authorize(&state, &caller, task_id, Access::Read).await?;
    let content = files::read(&state.db, task_id, &path)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no file `{path}` in this task")))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        content,
    )
        .into_response())
}

/// Create or replace one file; the body is its UTF-8 content.
#[utoipa::path(put, path = "/api/v1/tasks/{task_id}/files/{*path}", tag = "files", security(("bearer" = [])),
    params(("task_id" = Uuid, Path), ("path" = String, Path, description = "the file's path; may contain '/'")),
    request_body(content = String, content_type = "text/plain",
        description = "UTF-8 text without NUL characters; no body saves an empty file"),
    responses((status = 200, description = "replaced", body = FileInfo), (status = 201, description = "created", body = FileInfo),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem),
        (status = 422, body = Problem)))]
pub async fn save_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((task_id, path)): Path<(Uuid, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<FileInfo>)> {
    let limits = &state.settings.limits;
    let path = parse_path(&path, &state)?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(limits),
        _ => ApiError::from(rejection),
    })?;
    if body.len() as u64 > limits.max_file_bytes {
        return Err(too_large(limits));
    }
    let content = std::str::from_utf8(&body)
        .map_err(|_| ApiError::Unprocessable("file content must be UTF-8 text".into()))?;
    check_text(content)?;
    // Replacing a file (what an editor's saves are) is one round trip that locks the task,
    // checks its owner and limits, and writes; only a new file needs the whole file set.
    let actor = caller.actor();
    match files::replace(&state.db, task_id, actor.id, &path, content, limits).await? {
        Replaced::Saved(info) => return Ok((StatusCode::OK, Json(info))),
        Replaced::NotOwner(owner) => {
            // Only the owner writes: a 403 for teachers and admins, a 404 for anyone else.
            let refusal = access::task_rule(&actor, owner, Access::Write)
                .err()
                .unwrap_or(lifecycle::Error::NotFound("task"));
            return Err(refusal.into());
        }
        Replaced::Absent => {}
    }
    let (info, created) = files::save(&state.db, task_id, &path, content, limits).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// Every file deleted, by path.
    pub deleted: Vec<String>,
}

/// Delete a file, or a folder and everything below it.
#[utoipa::path(delete, path = "/api/v1/tasks/{task_id}/files/{*path}", tag = "files", security(("bearer" = [])),
    params(("task_id" = Uuid, Path), ("path" = String, Path, description = "a file's or folder's path")),
    responses((status = 200, body = Deleted), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_path(
    State(state): State<AppState>,
    caller: Caller,
    Path((task_id, path)): Path<(Uuid, String)>,
) -> ApiResult<Json<Deleted>> {
    let path = parse_path(&path, &state)?;
    authorize(&state, &caller, task_id, Access::Write).await?;
    let deleted = files::delete(&state.db, task_id, &path).await?;
    Ok(Json(Deleted { deleted }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Upsert {
    pub path: String,
    pub content: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[serde(default)]
    pub upsert: Vec<Upsert>,
    /// Files or folders, deleted before the upserts are written.
    #[serde(default)]
    pub delete: Vec<String>,
}

async fn task_detail(state: &AppState, task_id: Uuid) -> ApiResult<TaskDetail> {
    let task = coderun_shared::tasks::get(&state.db, task_id)
        .await?
        .ok_or_else(|| ApiError::not_found("task"))?;
    let set = files::file_set(&state.db, task_id, task.main_file.clone()).await?;
    Ok(TaskDetail {
        files: set.tree(),
        task,
    })
}

/// Delete and create-or-replace many files in one transaction: all of it or none.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/files:batch", tag = "files", security(("bearer" = [])),
    params(("task_id" = Uuid, Path)), request_body = BatchRequest,
    responses((status = 200, body = TaskDetail), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn batch_files(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<Uuid>,
    Json(body): Json<BatchRequest>,
) -> ApiResult<Json<TaskDetail>> {
    let limits = &state.settings.limits;
    if body.upsert.is_empty() && body.delete.is_empty() {
        return Err(ApiError::BadRequest(
            "a batch must upsert or delete at least one path".into(),
        ));
    }
    let max_ops = limits.max_files_per_task as usize * 2;
    if body.upsert.len() + body.delete.len() > max_ops {
        return Err(ApiError::BadRequest(format!(
            "a batch holds at most {max_ops} operations"
        )));
    }
    let mut upsert = Vec::with_capacity(body.upsert.len());
    for item in body.upsert {
        let path = parse_path(&item.path, &state)?;
        if item.content.len() as u64 > limits.max_file_bytes {
            return Err(too_large(limits));
        }
        check_text(&item.content)?;
        upsert.push((path, item.content));
    }
    let delete = body
        .delete
        .iter()
        .map(|p| parse_path(p, &state))
        .collect::<ApiResult<Vec<_>>>()?;
    authorize(&state, &caller, task_id, Access::Write).await?;
    files::batch(&state.db, task_id, &upsert, &delete, limits).await?;
    Ok(Json(task_detail(&state, task_id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    pub from: String,
    pub to: String,
}

/// Rename or move a file or a folder; the main file stays main under its new path.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/files:move", tag = "files", security(("bearer" = [])),
    params(("task_id" = Uuid, Path)), request_body = MoveRequest,
    responses((status = 200, body = TaskDetail), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)))]
pub async fn move_path(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<Uuid>,
    Json(body): Json<MoveRequest>,
) -> ApiResult<Json<TaskDetail>> {
    let from = parse_path(&body.from, &state)?;
    let to = parse_path(&body.to, &state)?;
    authorize(&state, &caller, task_id, Access::Write).await?;
    files::move_path(&state.db, task_id, &from, &to, &state.settings.limits).await?;
    Ok(Json(task_detail(&state, task_id).await?))
}

/// `Lab 1: sorting` → `Lab-1-sorting`, safe inside a Content-Disposition header.
fn archive_name(task_name: &str) -> String {
    let mut name = String::new();
    for c in task_name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches(|c| c == '-' || c == '.');
    if name.is_empty() {
        "task".to_owned()
    } else {
        name.to_owned()
    }
}

/// All files of the task as a zip archive, streamed as the files are read (memory stays
/// bounded whatever the task's size). A task larger than `storage.archive_redirect_bytes`
/// (when set, as on Lambda, whose responses are buffered and capped) is built into the bucket
/// instead and answered with a 302 to a time-limited URL.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/archive", tag = "files", security(("bearer" = [])),
    params(("task_id" = Uuid, Path)),
    responses((status = 200, content_type = "application/zip", body = Vec<u8>),
        (status = 302, headers(("Location" = String, description = "a presigned URL of the archive"))),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn download_archive(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<Uuid>,
) -> ApiResult<Response> {
    let task = authorize(&state, &caller, task_id, Access::Read).await?;
    let redirect_over = state.settings.storage.archive_redirect_bytes;
    if redirect_over > 0 && task.total_size.max(0) as u64 > redirect_over {
        let key = objects::archive_key(task.id, Uuid::new_v4());
        archive::upload(state.db.clone(), &state.storage, task.id, &key).await?;
        let url = state.storage.presigned_get(&key).await?;
        let location = HeaderValue::from_str(&url).map_err(|e| ApiError::Internal(e.into()))?;
        return Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response());
    }
    let disposition = format!("attachment; filename=\"{}.zip\"", archive_name(&task.name));
    let disposition =
        HeaderValue::from_str(&disposition).map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/zip"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(archive::stream(state.db.clone(), task.id)),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::archive_name;

    #[test]
    fn archive_names_are_header_safe() {
        assert_eq!(archive_name("Lab 1: sorting"), "Lab-1-sorting");
        assert_eq!(archive_name("\"quoted\"\r\n"), "quoted");
        assert_eq!(archive_name("ü"), "task");
    }
}
