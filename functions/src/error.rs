//! `ApiError`: every way a request can fail, each with its status, answered as an RFC 9457
//! problem (`application/problem+json`). Internal causes are logged in full and answered with
//! an opaque 500 that leaks nothing — except a dependency that is down or restarting (Postgres,
//! Redis, S3: see `coderun_shared::transient`), which is answered `503` with `Retry-After`, since
//! the same request will work once it is back.
//!
//! The OpenAPI document lists, for every route, the statuses these variants give it: the ones
//! shared machinery produces (401, 404, 400/413/415/422 for bodies, 503) by rule in
//! [`crate::openapi`], the route's own in its `#[utoipa::path]` annotation.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use coderun_shared::domain::Invalid;
use coderun_shared::transient::{self, Dependency};
use coderun_shared::{
    auth, bundle, files, lifecycle, pipelines, runs, snapshots, storage, tasks, users, webhooks,
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A value in the request breaks a rule; the message says which.
    #[error("{0}")]
    BadRequest(String),
    /// The body could not be parsed as the JSON this route takes.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such resource, or one the caller may not see (the two are indistinguishable).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A quota that frees up by itself; `Retry-After` says when to try again.
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after: u64 },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A dependency is down or restarting; `Retry-After` says when to try again.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The problem document of RFC 9457.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized | ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid-request",
            ApiError::Unprocessable(_) => "invalid-body",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadCredentials => "bad-credentials",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::TooManyRequests { .. } => "too-many-requests",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("{what} not found"))
    }

    /// A dependency that is down: 503 with `Retry-After`, whatever layer noticed it.
    pub fn unavailable(dependency: Dependency) -> Self {
        let what = match dependency {
            Dependency::Postgres => "the database",
            Dependency::Redis => "the queue (Redis)",
            Dependency::S3 => "object storage",
            Dependency::Kubernetes => "the cluster",
        };
        ApiError::Unavailable(format!(
            "{what} is briefly unavailable; nothing was changed, try again in a few seconds"
        ))
    }

    /// An internal failure, or 503 when its cause is a dependency that is down.
    pub fn internal(cause: anyhow::Error) -> Self {
        match transient::classify(&cause) {
            Some(dependency) => {
                tracing::warn!(error = ?cause, %dependency, "a dependency is unavailable");
                ApiError::unavailable(dependency)
            }
            None => ApiError::Internal(cause),
        }
    }

    fn problem(&self) -> Problem {
        let status = self.status_code();
        Problem {
            kind: format!("urn:coderun:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // An internal error built without `ApiError::internal` gets the same classification.
        let this = match self {
            ApiError::Internal(cause) => ApiError::internal(cause),
            other => other,
        };
        if let ApiError::Internal(cause) = &this {
            tracing::error!(error = ?cause, "request failed");
        }
        let this_status = this.status_code();
        let mut response = this.respond();
        if this_status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// How long a caller told "unavailable" waits: a restarting server is usually back within
/// seconds.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 5;

impl ApiError {
    fn respond(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, ApiError::Unauthorized | ApiError::BadCredentials) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        response
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(e.into())
    }
}

impl From<storage::Error> for ApiError {
    fn from(e: storage::Error) -> Self {
        ApiError::internal(e.into())
    }
}

impl From<fred::error::Error> for ApiError {
    fn from(e: fred::error::Error) -> Self {
        ApiError::internal(anyhow::Error::new(e).context("redis"))
    }
}

impl From<snapshots::Error> for ApiError {
    fn from(e: snapshots::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e).context("code snapshot"))
    }
}

impl From<bundle::Error> for ApiError {
    fn from(e: bundle::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e).context("code bundle"))
    }
}

/// How long a login that found every hash slot busy is told to wait: hashes take tens of
/// milliseconds, so a slot is free again almost at once.
pub const HASH_BUSY_RETRY_AFTER_SECONDS: u64 = 1;

impl From<auth::Error> for ApiError {
    fn from(e: auth::Error) -> Self {
        match e {
            auth::Error::Busy => ApiError::TooManyRequests {
                detail: "too many logins are being checked right now; try again in a moment".into(),
                retry_after: HASH_BUSY_RETRY_AFTER_SECONDS,
            },
            other => ApiError::Internal(other.into()),
        }
    }
}

/// How long a caller at the cap on active runs is told to wait: runs of the default spec
/// usually finish within seconds, and a retry then costs one cheap refusal.
pub const ACTIVE_RUNS_RETRY_AFTER_SECONDS: u64 = 10;

impl From<runs::Error> for ApiError {
    fn from(e: runs::Error) -> Self {
        match e {
            runs::Error::NotFound => ApiError::not_found("run"),
            runs::Error::TaskBusy | runs::Error::NotFinished | runs::Error::SnapshotGone => {
                ApiError::Conflict(e.to_string())
            }
            // Two requests with one key at once: the other one created the run; repeating
            // this request answers it.
            runs::Error::IdempotencyKeyUsed => ApiError::Conflict(
                "a request with this Idempotency-Key was being handled at the same time; \
                 repeat the request to get its run"
                    .into(),
            ),
            // (The lifecycle turns `OverQuota` into its own refusal, with the sweep's period;
            // this arm is only for a caller of `runs::admit` that does not.)
            runs::Error::TooManyActive { .. } | runs::Error::OverQuota { .. } => {
                ApiError::TooManyRequests {
                    detail: e.to_string(),
                    retry_after: ACTIVE_RUNS_RETRY_AFTER_SECONDS,
                }
            }
            runs::Error::Db(e) => e.into(),
        }
    }
}

impl From<lifecycle::Error> for ApiError {
    fn from(e: lifecycle::Error) -> Self {
        use lifecycle::Error as E;
        match e {
            E::NotFound(what) => ApiError::not_found(what),
            E::Forbidden(why) => ApiError::Forbidden(why),
            E::Invalid(detail) => ApiError::BadRequest(detail),
            E::Conflict(detail) => ApiError::Conflict(detail),
            E::IdempotencyKeyReused => ApiError::Unprocessable(e.to_string()),
            E::QuotaExceeded { retry_after, .. } => ApiError::TooManyRequests {
                detail: e.to_string(),
                retry_after,
            },
            E::Run(e) => e.into(),
            E::Snapshot(e) => e.into(),
            E::Storage(e) => e.into(),
            E::Redis(e) => e.into(),
            E::Db(e) => e.into(),
            E::SnapshotSwept(_) => ApiError::Internal(e.into()),
        }
    }
}

impl From<pipelines::Error> for ApiError {
    fn from(e: pipelines::Error) -> Self {
        use pipelines::Error as E;
        match e {
            E::NotFound(what) => ApiError::not_found(what),
            E::Forbidden(why) => ApiError::Forbidden(why),
            // A definition or request that breaks a rule: the message names the stage or step.
            E::Invalid(detail) => ApiError::Unprocessable(detail),
            E::Conflict(detail) => ApiError::Conflict(detail),
            E::Lifecycle(e) => e.into(),
            E::Snapshot(e) => e.into(),
            E::Db(e) => e.into(),
        }
    }
}

impl From<coderun_shared::datasets::Error> for ApiError {
    fn from(e: coderun_shared::datasets::Error) -> Self {
        use coderun_shared::datasets::Error as E;
        match e {
            E::NotFound(detail) => ApiError::NotFound(detail),
            E::Forbidden(why) => ApiError::Forbidden(why),
            E::Invalid(detail) => ApiError::BadRequest(detail),
            E::Conflict(detail) => ApiError::Conflict(detail),
            E::TooLarge(detail) => ApiError::PayloadTooLarge(detail),
            E::ChecksumMismatch(detail) => ApiError::Unprocessable(detail),
            E::Storage(e) => e.into(),
            E::Db(e) => e.into(),
        }
    }
}

impl From<webhooks::Error> for ApiError {
    fn from(e: webhooks::Error) -> Self {
        use webhooks::Error as E;
        match e {
            E::Invalid(detail) => ApiError::Unprocessable(detail),
            E::NotFound(what) => ApiError::not_found(what),
            E::TooManyEndpoints { .. } | E::Disabled(_) => ApiError::Conflict(e.to_string()),
            E::Db(e) => e.into(),
        }
    }
}

impl From<users::Error> for ApiError {
    fn from(e: users::Error) -> Self {
        match e {
            users::Error::UsernameTaken => ApiError::Conflict(e.to_string()),
            users::Error::Db(e) => e.into(),
        }
    }
}

impl From<tasks::Error> for ApiError {
    fn from(e: tasks::Error) -> Self {
        match e {
            tasks::Error::NotFound => ApiError::not_found("task"),
            tasks::Error::TooManyTasks { .. } | tasks::Error::NoSuchMainFile(_) => {
                ApiError::Conflict(e.to_string())
            }
            tasks::Error::Db(e) => e.into(),
        }
    }
}

impl From<files::Error> for ApiError {
    fn from(e: files::Error) -> Self {
        use files::Error as E;
        match e {
            E::TaskNotFound => ApiError::not_found("task"),
            E::NotFound(_) => ApiError::NotFound(e.to_string()),
            E::MoveIntoItself { .. } | E::Duplicate(_) | E::InvalidPath { .. } => {
                ApiError::BadRequest(e.to_string())
            }
            E::IsFolder(_)
            | E::NameClash { .. }
            | E::UnderFile(_)
            | E::Exists(_)
            | E::DeletesMainFile(_)
            | E::TooManyFiles { .. }
            | E::TaskTooLarge { .. } => ApiError::Conflict(e.to_string()),
            E::Db(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let detail = rejection.body_text();
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(detail),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
                "expected a body with Content-Type: application/json".into(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(detail),
            _ => ApiError::BadRequest(detail),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is too large".into())
            }
            _ => ApiError::BadRequest(rejection.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        // A malformed id in the URL names nothing that exists.
        ApiError::NotFound(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
