//! Tasks: an owner's named, language-bound tree of files. Creation seeds the language's default
//! files; every change bumps `updated_at` so lists show the newest change first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Command, Description, FilePath, Language, PageRequest, TaskName};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("task not found")]
    NotFound,
    #[error("you already have {max} tasks, the most allowed; delete one first")]
    TooManyTasks { max: u32 },
    #[error("`{0}` is not a file of this task")]
    NoSuchMainFile(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Task {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub language: String,
    pub description: String,
    /// Always names an existing file of the task.
    pub main_file: Option<String>,
    /// The task's own command; `null` means the language's default.
    pub command: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub total_size: i64,
    pub file_count: i32,
}

/// A checked query of whole [`Task`]s: `$head`, every column of a task, then `$tail` (string
/// literals), with `$arg`s bound to its parameters.
macro_rules! query_tasks {
    ($head:literal, $tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Task,
            $head + "id, owner_id, name, language, description, main_file, command, created_at,
                updated_at, total_size, file_count" + $tail
            $(, $arg)*
        )
    };
}

/// A task about to be created, with its first files (validated by the caller).
pub struct NewTask {
    pub owner_id: Uuid,
    pub name: TaskName,
    pub language: Language,
    pub description: Description,
    pub main_file: FilePath,
    pub files: Vec<(FilePath, String)>,
}

/// Creates the task and its files in one transaction, refusing once the owner has
/// `max_tasks` tasks. The owner's row is locked so two concurrent creates cannot both pass.
pub async fn create(pool: &PgPool, new: NewTask, max_tasks: u32) -> Result<Task, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "SELECT 1 AS locked FROM users WHERE id = $1 FOR UPDATE",
        new.owner_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM tasks WHERE owner_id = $1"#,
        new.owner_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if count >= i64::from(max_tasks) {
        return Err(Error::TooManyTasks { max: max_tasks });
    }
    let id = Uuid::new_v4();
    let total: i64 = new.files.iter().map(|(_, c)| c.len() as i64).sum();
    let task = query_tasks!(
        "INSERT INTO tasks (id, owner_id, name, language, description, main_file, total_size,
            file_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        "",
        id,
        new.owner_id,
        new.name.as_str(),
        new.language.as_str(),
        new.description.as_str(),
        new.main_file.as_str(),
        total,
        new.files.len() as i32,
    )
    .fetch_one(&mut *tx)
    .await?;
    if !new.files.is_empty() {
        let paths: Vec<String> = new.files.iter().map(|(p, _)| p.to_string()).collect();
        let contents: Vec<String> = new.files.iter().map(|(_, c)| c.clone()).collect();
        let sizes: Vec<i64> = new.files.iter().map(|(_, c)| c.len() as i64).collect();
        sqlx::query!(
            "INSERT INTO task_files (task_id, path, content, size)
             SELECT $1, path, content, size
             FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS f(path, content, size)",
            id,
            &paths,
            &contents,
            &sizes,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(task)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Task>, sqlx::Error> {
    query_tasks!("SELECT ", " FROM tasks WHERE id = $1", id)
        .fetch_optional(pool)
        .await
}

/// Filters of the task list.
#[derive(Debug, Default)]
pub struct TaskFilter {
    /// Only this owner's tasks; `None` lists everyone's (teachers and admins).
    pub owner_id: Option<Uuid>,
    pub language: Option<String>,
    /// A case-insensitive substring of the name.
    pub q: Option<String>,
}

/// One page of tasks, newest change first, and the total matching the filter.
pub async fn list(
    pool: &PgPool,
    filter: &TaskFilter,
    page: PageRequest,
) -> Result<(Vec<Task>, i64), sqlx::Error> {
    // Postgres text cannot hold NUL (the query would fail), and no name holds one: no match.
    if filter.q.as_deref().is_some_and(|q| q.contains('\0')) {
        return Ok((Vec::new(), 0));
    }
    // strpos needs no escaping of LIKE's wildcards.
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM tasks
           WHERE ($1::uuid IS NULL OR owner_id = $1)
             AND ($2::text IS NULL OR language = $2)
             AND ($3::text IS NULL OR strpos(lower(name), lower($3)) > 0)"#,
        filter.owner_id,
        filter.language,
        filter.q,
    )
    .fetch_one(pool)
    .await?;
    let tasks = query_tasks!(
        "SELECT ",
        " FROM tasks
         WHERE ($1::uuid IS NULL OR owner_id = $1)
           AND ($2::text IS NULL OR language = $2)
           AND ($3::text IS NULL OR strpos(lower(name), lower($3)) > 0)
         ORDER BY updated_at DESC, id LIMIT $4 OFFSET $5",
        filter.owner_id,
        filter.language,
        filter.q,
        page.limit(),
        page.offset(),
    )
    .fetch_all(pool)
    .await?;
    Ok((tasks, total))
}

/// The fields a PATCH may change; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct TaskPatch {
    pub name: Option<TaskName>,
    pub description: Option<Description>,
    pub main_file: Option<FilePath>,
    /// `Some(None)` returns to the language's default command.
    pub command: Option<Option<Command>>,
}

pub async fn update(pool: &PgPool, id: Uuid, patch: TaskPatch) -> Result<Task, Error> {
    let mut tx = pool.begin().await?;
    let locked: Option<Uuid> =
        sqlx::query_scalar!("SELECT id FROM tasks WHERE id = $1 FOR UPDATE", id)
            .fetch_optional(&mut *tx)
            .await?;
    locked.ok_or(Error::NotFound)?;
    if let Some(main) = &patch.main_file {
        let exists = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM task_files WHERE task_id = $1 AND path = $2)
               AS "exists!""#,
            id,
            main.as_str()
        )
        .fetch_one(&mut *tx)
        .await?;
        if !exists {
            return Err(Error::NoSuchMainFile(main.to_string()));
        }
    }
    let (set_command, command) = match &patch.command {
        Some(command) => (true, command.as_ref().map(|c| c.as_str().to_owned())),
        None => (false, None),
    };
    let task = query_tasks!(
        "UPDATE tasks SET
            name = coalesce($2, name),
            description = coalesce($3, description),
            main_file = coalesce($4, main_file),
            command = CASE WHEN $5 THEN $6 ELSE command END,
            updated_at = now()
         WHERE id = $1 RETURNING ",
        "",
        id,
        patch.name.as_ref().map(TaskName::as_str),
        patch.description.as_ref().map(Description::as_str),
        patch.main_file.as_ref().map(FilePath::as_str),
        set_command,
        command,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(task)
}

/// Deletes the task and its files; `false` when there was no such task.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!("DELETE FROM tasks WHERE id = $1", id)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}
