//! Tasks: an owner's named, language-bound tree of files. Creation seeds the language's default
//! files; every change bumps `updated_at` so lists show the newest change first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
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

/// The columns of [`Task`], as a literal so queries stay `&'static str`.
macro_rules! task_columns {
    () => {
        "id, owner_id, name, language, description, main_file, command, created_at, updated_at, \
         total_size, file_count"
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
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(new.owner_id)
        .execute(&mut *tx)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE owner_id = $1")
        .bind(new.owner_id)
        .fetch_one(&mut *tx)
        .await?;
    if count >= i64::from(max_tasks) {
        return Err(Error::TooManyTasks { max: max_tasks });
    }
    let id = Uuid::new_v4();
    let total: i64 = new.files.iter().map(|(_, c)| c.len() as i64).sum();
    let task = sqlx::query_as::<_, Task>(concat!(
        "INSERT INTO tasks (id, owner_id, name, language, description, main_file, total_size, file_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(new.owner_id)
    .bind(new.name.as_str())
    .bind(new.language.as_str())
    .bind(new.description.as_str())
    .bind(new.main_file.as_str())
    .bind(total)
    .bind(new.files.len() as i32)
    .fetch_one(&mut *tx)
    .await?;
    if !new.files.is_empty() {
        let mut insert: QueryBuilder<Postgres> =
            QueryBuilder::new("INSERT INTO task_files (task_id, path, content, size) ");
        insert.push_values(&new.files, |mut row, (path, content)| {
            row.push_bind(id)
                .push_bind(path.as_str())
                .push_bind(content)
                .push_bind(content.len() as i64);
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(task)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Task>, sqlx::Error> {
    sqlx::query_as::<_, Task>(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE id = $1"
    ))
    .bind(id)
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
    fn push_filter(query: &mut QueryBuilder<Postgres>, filter: &TaskFilter) {
        query.push(" WHERE true");
        if let Some(owner) = filter.owner_id {
            query.push(" AND owner_id = ").push_bind(owner);
        }
        if let Some(language) = &filter.language {
            query.push(" AND language = ").push_bind(language);
        }
        if let Some(q) = &filter.q {
            // strpos needs no escaping of LIKE's wildcards.
            query
                .push(" AND strpos(lower(name), lower(")
                .push_bind(q)
                .push(")) > 0");
        }
    }
    let mut count: QueryBuilder<Postgres> = QueryBuilder::new("SELECT count(*) FROM tasks");
    push_filter(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;

    let mut select: QueryBuilder<Postgres> =
        QueryBuilder::new(concat!("SELECT ", task_columns!(), " FROM tasks"));
    push_filter(&mut select, filter);
    select
        .push(" ORDER BY updated_at DESC, id LIMIT ")
        .push_bind(page.limit())
        .push(" OFFSET ")
        .push_bind(page.offset());
    let tasks = select.build_query_as::<Task>().fetch_all(pool).await?;
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
    let locked: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tasks WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    locked.ok_or(Error::NotFound)?;
    if let Some(main) = &patch.main_file {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM task_files WHERE task_id = $1 AND path = $2)",
        )
        .bind(id)
        .bind(main.as_str())
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
    let task = sqlx::query_as::<_, Task>(concat!(
        "UPDATE tasks SET
            name = coalesce($2, name),
            description = coalesce($3, description),
            main_file = coalesce($4, main_file),
            command = CASE WHEN $5 THEN $6 ELSE command END,
            updated_at = now()
         WHERE id = $1 RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(patch.name.as_ref().map(TaskName::as_str))
    .bind(patch.description.as_ref().map(Description::as_str))
    .bind(patch.main_file.as_ref().map(FilePath::as_str))
    .bind(set_command)
    .bind(command)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(task)
}

/// Deletes the task and its files; `false` when there was no such task.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let result = sqlx::query("DELETE FROM tasks WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}
