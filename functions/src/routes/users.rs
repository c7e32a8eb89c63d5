//! Staff's view of users: the list with task and run counts (teachers and admins), and creating
//! many users at once from CSV or JSON (admins). Creating one user is `POST /api/v1/users`
//! (in [`super::auth`]).
//!
//! A batch creates every valid line and reports each line's fate; only a body that cannot be
//! read as a whole (wrong media type, not UTF-8, no header, too many lines) is refused outright.

use std::collections::HashMap;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use coderun_shared::domain::{NewPassword, Page, PageRequest, Role, Username};
use coderun_shared::users::{self, UserFilter, UserSummary};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, Json, Query};
use crate::state::AppState;

/// Users a batch may hold.
pub const MAX_BATCH_USERS: usize = 1000;
/// A batch body's byte limit: the longest allowed lines (username, password, role) times
/// [`MAX_BATCH_USERS`] fit well below it.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(create_users).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListUsersQuery {
    /// Page number, from 1.
    pub page: Option<i64>,
    /// Items per page, 1 to 100.
    pub per_page: Option<i64>,
    /// Only users whose name contains this text (case-insensitive).
    pub q: Option<String>,
    /// Only users with this role: `student`, `teacher` or `admin`.
    pub role: Option<String>,
}

fn parse_role(raw: &str) -> Result<Role, ApiError> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).map_err(|_| {
        ApiError::BadRequest(format!(
            "role must be student, teacher or admin, not `{raw}`"
        ))
    })
}

/// Users by username with how many tasks they keep and runs they made (teachers and admins).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = [])), params(ListUsersQuery),
    responses((status = 200, body = Page<UserSummary>), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListUsersQuery>,
) -> ApiResult<Json<Page<UserSummary>>> {
    if !caller.role.reads_everything() {
        return Err(ApiError::Forbidden(
            "only teachers and admins may list users",
        ));
    }
    let page = PageRequest::parse(query.page, query.per_page, &state.settings.limits)?;
    if query.q.as_ref().is_some_and(|q| q.chars().count() > 100) {
        return Err(ApiError::BadRequest(
            "q must be at most 100 characters long".into(),
        ));
    }
    let filter = UserFilter {
        q: query.q.filter(|q| !q.is_empty()),
        role: query.role.as_deref().map(parse_role).transpose()?,
    };
    let (items, total) = users::list_with_counts(&state.db, &filter, page).await?;
    Ok(Json(Page::new(items, page, total)))
}

/// One user of a JSON batch.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchUser {
    pub username: String,
    pub password: String,
    /// `student`, `teacher` or `admin`.
    pub role: String,
}

/// A JSON batch; the same as a CSV body with the header `username,password,role`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUsers {
    #[schema(min_items = 1)]
    pub users: Vec<BatchUser>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LineStatus {
    Created,
    Error,
}

/// What became of one line of a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LineReport {
    /// The line in the CSV file (the header is line 1), or the position in the JSON `users`
    /// array counting from 1.
    pub line: u64,
    /// As given (trimmed in CSV).
    pub username: String,
    pub status: LineStatus,
    /// Why the line was refused; `null` when it was created.
    pub detail: Option<String>,
    /// The new user's id, when created.
    pub id: Option<Uuid>,
    /// The new user's role, when created.
    pub role: Option<Role>,
    pub created_at: Option<DateTime<Utc>>,
}

/// The report of a batch: every line, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchReport {
    pub created: usize,
    pub failed: usize,
    pub lines: Vec<LineReport>,
}

/// One line as read, before its checks.
struct Line {
    line: u64,
    username: String,
    password: String,
    role: String,
    /// A line that could not even be split into the three fields.
    unreadable: Option<String>,
}

/// Create many users from CSV (`text/csv`, header `username,password,role`) or JSON
/// (`{users: [{username, password, role}]}`), at most 1000; admins only. Every valid line is
/// created; the answer reports each line. A username that is taken or named twice, a password
/// too short, an unknown role fail their own line only.
#[utoipa::path(post, path = "/api/v1/users:batch", tag = "users", security(("bearer" = [])),
    request_body(description = "CSV with the header `username,password,role`, or the JSON form",
        content((CreateUsers = "application/json"), (String = "text/csv"))),
    responses((status = 200, body = BatchReport, description = "each line's outcome; some may have failed"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_users(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<BatchReport>> {
    if caller.role != Role::Admin {
        return Err(ApiError::Forbidden("only admins may create users"));
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!(
            "a batch body holds at most {MAX_BATCH_BYTES} bytes"
        )),
        _ => ApiError::from(rejection),
    })?;
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let lines = match media_type.as_str() {
        "text/csv" => read_csv(&body)?,
        "application/json" => read_json(&body)?,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "expected a body with Content-Type: text/csv or application/json".into(),
            ));
        }
    };
    if lines.is_empty() {
        return Err(ApiError::BadRequest("the batch names no users".into()));
    }

    let mut first_line_of: HashMap<String, u64> = HashMap::new();
    let mut reports = Vec::with_capacity(lines.len());
    for line in lines {
        let checked = check_line(&line, &mut first_line_of);
        let outcome = match checked {
            Err(detail) => Err(detail),
            // One hash at a time: Argon2 is slow and large on purpose.
            Ok((username, password, role)) => {
                let hash = state.hash_password(password.as_str().to_owned()).await?;
                match users::create(&state.db, &username, &hash, role).await {
                    Ok(user) => Ok(user),
                    Err(users::Error::UsernameTaken) => Err("the username is taken".to_owned()),
                    Err(users::Error::Db(e)) => return Err(e.into()),
                }
            }
        };
        reports.push(match outcome {
            Ok(user) => LineReport {
                line: line.line,
                username: line.username,
                status: LineStatus::Created,
                detail: None,
                id: Some(user.id),
                role: Some(user.role),
                created_at: Some(user.created_at),
            },
            Err(detail) => LineReport {
                line: line.line,
                username: line.username,
                status: LineStatus::Error,
                detail: Some(detail),
                id: None,
                role: None,
                created_at: None,
            },
        });
    }
    let created = reports
        .iter()
        .filter(|r| r.status == LineStatus::Created)
        .count();
    if created > 0 {
        tracing::info!(created, "users created in a batch");
    }
    Ok(Json(BatchReport {
        created,
        failed: reports.len() - created,
        lines: reports,
    }))
}

/// The line's values, parsed, or why the line is refused.
fn check_line(
    line: &Line,
    first_line_of: &mut HashMap<String, u64>,
) -> Result<(Username, NewPassword, Role), String> {
    if let Some(why) = &line.unreadable {
        return Err(why.clone());
    }
    let username = Username::parse(&line.username).map_err(|e| e.0)?;
    if let Some(first) = first_line_of.get(username.as_str()) {
        return Err(format!(
            "the username is already on line {first} of this batch"
        ));
    }
    first_line_of.insert(username.as_str().to_owned(), line.line);
    let password = NewPassword::parse(&line.password).map_err(|e| e.0)?;
    let role = parse_role(&line.role).map_err(|e| e.to_string())?;
    Ok((username, password, role))
}

const COLUMNS: [&str; 3] = ["username", "password", "role"];

/// Reads a CSV body: a header naming the three columns (any order, any case), then one user a
/// line. Fields are trimmed; empty lines are skipped; a UTF-8 byte order mark is ignored.
fn read_csv(body: &[u8]) -> ApiResult<Vec<Line>> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("the CSV must be UTF-8 text".into()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| ApiError::BadRequest(format!("the CSV header cannot be read: {e}")))?
        .clone();
    let names: Vec<String> = header.iter().map(str::to_ascii_lowercase).collect();
    let mut positions = [0usize; 3];
    for (slot, column) in positions.iter_mut().zip(COLUMNS) {
        *slot = names.iter().position(|n| n == column).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "the CSV's first line must be the header `username,password,role`; `{column}` is missing"
            ))
        })?;
    }
    if let Some(extra) = names.iter().find(|n| !COLUMNS.contains(&n.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "the CSV header names an unknown column `{extra}`; the columns are username, password, role"
        )));
    }
    if names.len() != COLUMNS.len() {
        return Err(ApiError::BadRequest(
            "the CSV header names a column twice".into(),
        ));
    }
    let mut lines = Vec::new();
    // Lines of the file as a person counts them (blank ones too), from each record's offset.
    let (mut counted_to, mut line) = (0usize, 1u64);
    for record in reader.records() {
        let record =
            record.map_err(|e| ApiError::BadRequest(format!("the CSV cannot be read: {e}")))?;
        if lines.len() == MAX_BATCH_USERS {
            return Err(too_many());
        }
        // A record's position is where the reader stood before it: possibly on the line end
        // of the line before, or on blank lines it skipped.
        let from = record
            .position()
            .and_then(|p| usize::try_from(p.byte()).ok())
            .unwrap_or(counted_to)
            .clamp(counted_to, text.len());
        let start = text.as_bytes()[from..]
            .iter()
            .position(|b| !matches!(b, b'\r' | b'\n'))
            .map_or(text.len(), |skipped| from + skipped);
        line += text.as_bytes()[counted_to..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        counted_to = start;
        let field = |i: usize| record.get(positions[i]).unwrap_or_default().to_owned();
        lines.push(Line {
            line,
            username: field(0),
            password: field(1),
            role: field(2),
            unreadable: (record.len() != COLUMNS.len()).then(|| {
                format!(
                    "the line has {} fields; expected 3 (username, password, role)",
                    record.len()
                )
            }),
        });
    }
    Ok(lines)
}

fn too_many() -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "a batch creates at most {MAX_BATCH_USERS} users; split it"
    ))
}

/// Reads a JSON body: 400 when it is not JSON, 422 when it is JSON of the wrong shape.
fn read_json(body: &[u8]) -> ApiResult<Vec<Line>> {
    let batch: CreateUsers = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::Unprocessable(format!("the body is not a batch of users: {e}"))
        }
        _ => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
    })?;
    if batch.users.len() > MAX_BATCH_USERS {
        return Err(too_many());
    }
    Ok(batch
        .users
        .into_iter()
        .enumerate()
        .map(|(i, user)| Line {
            line: i as u64 + 1,
            username: user.username,
            password: user.password,
            role: user.role,
            unreadable: None,
        })
        .collect())
}
