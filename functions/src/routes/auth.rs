//! Logging in, the caller, and user creation by admins.
//!
//! A login is throttled before its password is hashed (per account and per client address,
//! fleet-wide), and every login that gets through costs exactly one Argon2 hash: an unknown
//! user is checked against a dummy hash of the same cost, so timing does not tell which names
//! exist.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use coderun_shared::domain::{NewPassword, Role, Username};
use coderun_shared::users::{self, User};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::client_address::ClientAddress;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, Json};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(me))
        .routes(routes!(create_user))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LoginUser {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Send it as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: LoginUser,
}

/// Exchange a username and password for a bearer token. Failed logins lock the account for a
/// growing while, and each client address has a budget of attempts and failures: beyond
/// either the answer is 429 with `Retry-After`.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = Problem), (status = 422, body = Problem),
        (status = 429, body = Problem, headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(body): Json<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    if let Some(refusal) = state.login_throttle.check(&body.username, &address).await? {
        metrics::counter!("login_refusals_total").increment(1);
        return Err(ApiError::TooManyRequests {
            detail: refusal.to_string(),
            retry_after: refusal.retry_after(),
        });
    }
    let found = if body.username.len() <= 64 && body.password.len() <= 1024 {
        users::find_for_login(&state.db, &body.username).await?
    } else {
        None
    };
    let (user, hash) = found.unzip();
    // Always one hash: the user's, or the dummy one for a name that does not exist.
    let matched = state.verify_password(body.password, hash).await?;
    let Some(user) = user.filter(|_| matched) else {
        state
            .login_throttle
            .failed(&body.username, &address)
            .await?;
        return Err(ApiError::BadCredentials);
    };
    state.login_throttle.succeeded(&body.username).await?;
    let (token, expires_at) = state
        .auth
        .issue(user.id, user.role)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(LoginResponse {
        token,
        expires_at,
        user: LoginUser {
            id: user.id,
            username: user.username,
            role: user.role,
        },
    }))
}

/// The caller.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = Problem)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<User>> {
    // A token may outlive its user only if users could be deleted; they cannot, but a token
    // signed for an unknown id must still not pass as anyone.
    users::get(&state.db, caller.id)
        .await?
        .map(Json)
        .ok_or(ApiError::Unauthorized)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 3–32 characters of a-z, 0-9, '.', '_' or '-'.
    pub username: String,
    /// 8–256 bytes.
    pub password: String,
    pub role: Role,
}

/// Create a user (admins only).
#[utoipa::path(post, path = "/api/v1/users", tag = "auth", security(("bearer" = [])), request_body = CreateUser,
    responses((status = 201, body = User), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    if caller.role != Role::Admin {
        return Err(ApiError::Forbidden("only admins may create users"));
    }
    let username = Username::parse(&body.username)?;
    let password = NewPassword::parse(&body.password)?;
    let hash = state.hash_password(password.as_str().to_owned()).await?;
    let user = users::create(&state.db, &username, &hash, body.role).await?;
    Ok((StatusCode::CREATED, Json(user)))
}
