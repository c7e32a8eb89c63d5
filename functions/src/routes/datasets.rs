//! Datasets: list and read (everyone: published versions; staff: drafts too), create, upload
//! into the draft (small files through the API, large ones straight to S3 by presigned
//! multipart URLs), publish the draft as the next version, delete (admins). Thin: the rules are
//! in [`coderun_shared::datasets`].
//!
//! `…/{name}:publish` and `…/uploads/{id}:complete` are answered by one POST route on
//! `{name}` and `{id}` that reads the action after the colon (the router matches whole
//! segments); the OpenAPI document names them as the contract does.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use coderun_shared::config::LimitSettings;
use coderun_shared::datasets::{
    self, CreatedUpload, DatasetDetail, DatasetSummary, Datasets, FileEntry, NewDataset,
    VersionDetail,
};
use coderun_shared::domain::FilePath;
use serde::Deserialize;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, Json, Path};
use crate::state::AppState;

/// The actions after a colon, documented here and routed by [`dataset_action`] and
/// [`upload_action`].
#[derive(utoipa::OpenApi)]
#[openapi(paths(publish_dataset, complete_upload))]
struct Actions;

pub fn router(limits: &LimitSettings) -> OpenApiRouter<AppState> {
    let file_limit = usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX);
    OpenApiRouter::with_openapi(Actions::openapi())
        .routes(routes!(list_datasets, create_dataset))
        .routes(routes!(get_dataset, delete_dataset))
        .route(
            "/api/v1/datasets/{name}",
            post(dataset_action).fallback(other_method),
        )
        .routes(
            routes!(put_dataset_file, delete_dataset_file).layer(DefaultBodyLimit::max(file_limit)),
        )
        .routes(routes!(create_upload))
        .route("/api/v1/datasets/{name}/uploads/{id}", post(upload_action))
        .routes(routes!(delete_version))
}

fn store(state: &AppState) -> Datasets<'_> {
    Datasets {
        settings: &state.settings,
        db: &state.db,
        storage: &state.storage,
    }
}

/// A 405 naming the methods `…/{name}` (or `…/{name}:publish`) answers.
fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = ApiError::MethodNotAllowed.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Datasets: every published one; staff also see those not published yet
/// (`latest_version: null`).
#[utoipa::path(get, path = "/api/v1/datasets", tag = "datasets", security(("bearer" = [])),
    responses((status = 200, body = Vec<DatasetSummary>), (status = 401, body = Problem)))]
pub async fn list_datasets(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<DatasetSummary>>> {
    Ok(Json(store(&state).list(&caller.actor()).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateDataset {
    /// A safe folder name: `$DATA_DIR/{name}`.
    pub name: String,
    pub title: String,
    pub description: Option<String>,
    /// Where the data comes from and its licence.
    pub source: Option<String>,
}

/// Creates an empty dataset (teachers and admins).
#[utoipa::path(post, path = "/api/v1/datasets", tag = "datasets", security(("bearer" = [])),
    request_body = CreateDataset,
    responses((status = 201, body = DatasetDetail), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateDataset>,
) -> ApiResult<(StatusCode, Json<DatasetDetail>)> {
    let new = NewDataset::parse(
        &body.name,
        &body.title,
        body.description.as_deref(),
        body.source.as_deref(),
    )?;
    let created = store(&state).create(&caller.actor(), new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The dataset, its versions with their files, and (staff only) its draft.
#[utoipa::path(get, path = "/api/v1/datasets/{name}", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = DatasetDetail), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    if name.ends_with(":publish") {
        return Ok(method_not_allowed("POST"));
    }
    Ok(Json(store(&state).get(&caller.actor(), &name).await?).into_response())
}

/// Deletes the dataset with every version (admins); 409 while a queued or active run uses it.
/// Its objects are removed in the background.
#[utoipa::path(delete, path = "/api/v1/datasets/{name}", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    if name.ends_with(":publish") {
        return Ok(method_not_allowed("POST"));
    }
    store(&state).delete(&caller.actor(), &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Any other method on `…/{name}` or `…/{name}:publish`: 405 with the methods the one the
/// caller meant answers (the router would list both routes' methods).
async fn other_method(Path(target): Path<String>) -> Response {
    if target.ends_with(":publish") {
        method_not_allowed("POST")
    } else {
        method_not_allowed("GET, HEAD, DELETE")
    }
}

/// `POST /datasets/{name}:publish`.
async fn dataset_action(
    State(state): State<AppState>,
    caller: Caller,
    Path(target): Path<String>,
) -> ApiResult<Response> {
    let Some(name) = target.strip_suffix(":publish") else {
        return Ok(method_not_allowed("GET, DELETE"));
    };
    Ok(publish_dataset(&state, &caller, name)
        .await?
        .into_response())
}

/// The draft becomes the next immutable version (`v1`, `v2`, …) (teachers and admins).
#[utoipa::path(post, path = "/api/v1/datasets/{name}:publish", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 201, body = VersionDetail), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem)))]
pub async fn publish_dataset(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> ApiResult<(StatusCode, Json<VersionDetail>)> {
    let version = store(state).publish(&caller.actor(), name).await?;
    Ok((StatusCode::CREATED, Json(version)))
}

fn parse_path(raw: &str, state: &AppState) -> ApiResult<FilePath> {
    Ok(FilePath::parse(raw, &state.settings.limits)?)
}

fn saved(entry: (FileEntry, bool)) -> (StatusCode, Json<FileEntry>) {
    let (file, created) = entry;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(file))
}

/// Puts a small file (at most `limits.max_file_bytes`; larger ones go through an upload) into
/// the draft (teachers and admins). The body is the file's bytes.
#[utoipa::path(put, path = "/api/v1/datasets/{name}/files/{*path}", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path), ("path" = String, Path, description = "the file's path; may contain '/'")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file's bytes"),
    responses((status = 200, description = "replaced", body = FileEntry), (status = 201, description = "created", body = FileEntry),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem)))]
pub async fn put_dataset_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, path)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<FileEntry>)> {
    let limits = &state.settings.limits;
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "a file PUT through the API holds at most {} bytes; send larger ones through \
             POST /api/v1/datasets/{{name}}/uploads",
            limits.max_file_bytes
        ))
    };
    let path = parse_path(&path, &state)?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        _ => ApiError::from(rejection),
    })?;
    if body.len() as u64 > limits.max_file_bytes {
        return Err(too_large());
    }
    let entry = store(&state)
        .put_file(&caller.actor(), &name, &path, body)
        .await?;
    Ok(saved(entry))
}

/// Removes a file from the draft (teachers and admins).
#[utoipa::path(delete, path = "/api/v1/datasets/{name}/files/{*path}", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path), ("path" = String, Path, description = "the file's path; may contain '/'")),
    responses((status = 204, description = "removed"), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_dataset_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, path)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let path = parse_path(&path, &state)?;
    store(&state)
        .delete_file(&caller.actor(), &name, &path)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateUpload {
    /// Where the file goes in the draft.
    pub path: String,
    /// Its exact size in bytes.
    #[serde(deserialize_with = "whole_number")]
    pub size: u64,
    /// Its sha256, hex: checked when the upload is completed.
    pub sha256: String,
}

/// A non-negative whole number, also when a client writes it as `67900.0`, at most
/// `i64::MAX` (the schema's maximum, and what Postgres stores).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(d)?;
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < i64::MAX as f64)
                .map(|f| f as u64)
        })
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "size must be a whole number of bytes, at most {}",
                i64::MAX
            ))
        })
}

/// Starts a multipart upload of a file of any size into the draft (teachers and admins): PUT
/// each part's bytes to its presigned URL, then `POST …/uploads/{id}:complete`.
#[utoipa::path(post, path = "/api/v1/datasets/{name}/uploads", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = CreateUpload,
    responses((status = 201, body = CreatedUpload), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem)))]
pub async fn create_upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<CreateUpload>,
) -> ApiResult<(StatusCode, Json<CreatedUpload>)> {
    let path = parse_path(&body.path, &state)?;
    let created = store(&state)
        .create_upload(&caller.actor(), &name, &path, body.size, &body.sha256)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `POST /datasets/{name}/uploads/{id}:complete`.
async fn upload_action(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, target)): Path<(String, String)>,
) -> ApiResult<Response> {
    let Some(id) = target.strip_suffix(":complete") else {
        return Err(ApiError::NotFound(
            "no such route; complete an upload with `POST …/uploads/{id}:complete`".into(),
        ));
    };
    let id = id
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("upload"))?;
    Ok(complete_upload(&state, &caller, &name, id)
        .await?
        .into_response())
}

/// Completes a multipart upload: its parts become one object whose size and sha256 are checked
/// against the announced ones (a mismatch is 422 and stores nothing); then the file is in the
/// draft (teachers and admins).
#[utoipa::path(post, path = "/api/v1/datasets/{name}/uploads/{id}:complete", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, description = "replaced a draft file", body = FileEntry),
        (status = 201, description = "a new draft file", body = FileEntry),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn complete_upload(
    state: &AppState,
    caller: &Caller,
    name: &str,
    id: Uuid,
) -> ApiResult<(StatusCode, Json<FileEntry>)> {
    let entry = store(state)
        .complete_upload(&caller.actor(), name, id)
        .await?;
    Ok(saved(entry))
}

/// Deletes one version (admins); 409 while a queued or active run uses it. Its number is never
/// given again; its objects are removed in the background.
#[utoipa::path(delete, path = "/api/v1/datasets/{name}/versions/{version}", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path), ("version" = String, Path, description = "`v1`, `v2`, …")),
    responses((status = 204, description = "deleted"), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let number = datasets::parse_version(&version)
        .map_err(|_| ApiError::NotFound(format!("dataset `{name}` has no version `{version}`")))?;
    store(&state)
        .delete_version(&caller.actor(), &name, number)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
