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

pub async fn create(
    pool: &PgPool,
    username: &Username,
    password_hash: &str,
    role: Role,
) -> Result<User, Error> {
    sqlx::query_as!(
        User,
        r#"INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, $4)
           ON CONFLICT (username) DO NOTHING
           RETURNING id, username, role AS "role: Role", created_at"#,
        Uuid::new_v4(),
        username.as_str(),
        password_hash,
        role.as_str(),
    )
    .fetch_optional(pool)
    .await?
    .ok_or(Error::UsernameTaken)
}

/// The user named `username` with their password hash, for login.
pub async fn find_for_login(
    pool: &PgPool,
    username: &str,
) -> Result<Option<(User, String)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT id, username, role AS "role: Role", created_at, password_hash
           FROM users WHERE username = $1"#,
        username,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        let user = User {
            id: r.id,
            username: r.username,
            role: r.role,
            created_at: r.created_at,
        };
        (user, r.password_hash)
    }))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as!(
        User,
        r#"SELECT id, username, role AS "role: Role", created_at FROM users WHERE id = $1"#,
        id,
    )
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

/// A user with how much they keep and have run, for staff's user list.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UserSummary {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Tasks the user owns now.
    pub task_count: i64,
    /// Runs of the user's tasks (a deleted task's runs go with it).
    pub run_count: i64,
}

/// Filters of the user list.
#[derive(Debug, Default)]
pub struct UserFilter {
    /// A case-insensitive substring of the username.
    pub q: Option<String>,
    pub role: Option<Role>,
}

/// One page of users by username, with their counts, and the total matching the filter.
pub async fn list_with_counts(
    pool: &PgPool,
    filter: &UserFilter,
    page: crate::domain::PageRequest,
) -> Result<(Vec<UserSummary>, i64), sqlx::Error> {
    // Postgres text cannot hold NUL (the query would fail), and no name holds one: no match.
    if filter.q.as_deref().is_some_and(|q| q.contains('\0')) {
        return Ok((Vec::new(), 0));
    }
    // strpos needs no escaping of LIKE's wildcards.
    let role = filter.role.map(Role::as_str);
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM users
           WHERE ($1::text IS NULL OR strpos(username, lower($1)) > 0)
             AND ($2::text IS NULL OR role = $2)"#,
        filter.q,
        role,
    )
    .fetch_one(pool)
    .await?;
    // Counts only for the page's users: tasks by their owner index, runs in one pass.
    let users = sqlx::query_as!(
        UserSummary,
        r#"WITH page AS (
            SELECT id, username, role, created_at FROM users
            WHERE ($1::text IS NULL OR strpos(username, lower($1)) > 0)
              AND ($2::text IS NULL OR role = $2)
            ORDER BY username LIMIT $3 OFFSET $4)
         SELECT p.id AS "id!", p.username AS "username!", p.role AS "role!: Role",
            p.created_at AS "created_at!",
            (SELECT count(*) FROM tasks t WHERE t.owner_id = p.id) AS "task_count!",
            coalesce(r.run_count, 0) AS "run_count!"
         FROM page p
         LEFT JOIN (SELECT owner_id, count(*) AS run_count FROM runs
                    WHERE owner_id IN (SELECT id FROM page) GROUP BY owner_id) r
           ON r.owner_id = p.id
         ORDER BY p.username"#,
        filter.q,
        role,
        page.limit(),
        page.offset(),
    )
    .fetch_all(pool)
    .await?;
    Ok((users, total))
}
