//! Extractors whose rejections are problem documents, and the caller's identity.

use axum::extract::{FromRef, FromRequest, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use coderun_shared::domain::Role;
use coderun_shared::lifecycle::Actor;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// `axum::Json` answering malformed bodies with problem+json.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` answering bad ids with a 404 problem.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` answering bad parameters with a 400 problem.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The authenticated caller, from a valid bearer token.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub id: Uuid,
    pub role: Role,
}

impl Caller {
    /// May the caller read what `owner` owns? Owners, teachers and admins may.
    pub fn can_read(&self, owner: Uuid) -> bool {
        self.id == owner || self.role.reads_everything()
    }

    /// The caller as the run lifecycle knows them.
    pub fn actor(&self) -> Actor {
        Actor {
            id: self.id,
            role: self.role,
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .ok_or(ApiError::Unauthorized)?;
        let claims = state
            .auth
            .verify(token.trim())
            .map_err(|_| ApiError::Unauthorized)?;
        tracing::Span::current().record("user_id", tracing::field::display(claims.sub));
        Ok(Caller {
            id: claims.sub,
            role: claims.role,
        })
    }
}
