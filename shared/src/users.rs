//! Users: creation, lookup by name for login, and the local stack's seed users.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Role, Username};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the username is taken")]
    UsernameTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A user as the API shows it (never with the password hash).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct UserWithHash {
    #[sqlx(flatten)]
    user: User,
    password_hash: String,
}

pub async fn create(
    pool: &PgPool,
    username: &Username,
    password_hash: &str,
    role: Role,
) -> Result<User, Error> {
    sqlx::query_as::<_, User>(
        "INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO NOTHING
         RETURNING id, username, role, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(username.as_str())
    .bind(password_hash)
    .bind(role)
    .fetch_optional(pool)
    .await?
    .ok_or(Error::UsernameTaken)
}

/// The user named `username` with their password hash, for login.
pub async fn find_for_login(
    pool: &PgPool,
    username: &str,
) -> Result<Option<(User, String)>, sqlx::Error> {
    let row = sqlx::query_as::<_, UserWithHash>(
        "SELECT id, username, role, created_at, password_hash FROM users WHERE username = $1",
    )
    .bind(username)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.user, r.password_hash)))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>("SELECT id, username, role, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Creates `username` unless it exists (the local stack's seed users); an existing user keeps
/// their password.
pub async fn ensure(
    pool: &PgPool,
    username: &Username,
    password_hash: &str,
    role: Role,
) -> Result<(), sqlx::Error> {
    match create(pool, username, password_hash, role).await {
        Ok(_) | Err(Error::UsernameTaken) => Ok(()),
        Err(Error::Db(e)) => Err(e),
    }
}
