//! Tasks: create (with the language's default files), list, read with the file tree, change,
//! delete. A task is visible to its owner, and readable by teachers and admins.

use axum::extract::State;
use axum::http::StatusCode;
use coderun_shared::domain::{
    Command, Description, FilePath, Language, Page, PageRequest, TaskName,
};
use coderun_shared::files::{self, TreeNode};
use coderun_shared::lifecycle;
use coderun_shared::tasks::{self, NewTask, Task, TaskFilter, TaskPatch};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, Json, Path, Query};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tasks, create_task))
        .routes(routes!(get_task, update_task, delete_task))
}

pub use coderun_shared::lifecycle::Access;

/// Loads a task the caller may use: someone else's task is a 404 (its existence is not
/// revealed), except that teachers and admins may read it, and are told 403 on a write.
pub async fn authorize(
    state: &AppState,
    caller: &Caller,
    task_id: Uuid,
    access: Access,
) -> ApiResult<Task> {
    Ok(lifecycle::access::task(&state.db, &caller.actor(), task_id, access).await?)
}

/// A task with its file tree.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: Task,
    pub files: Vec<TreeNode>,
}

async fn detail(state: &AppState, task: Task) -> ApiResult<TaskDetail> {
    let set = files::file_set(&state.db, task.id, task.main_file.clone()).await?;
    Ok(TaskDetail {
        files: set.tree(),
        task,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    pub name: String,
    /// One of `GET /api/v1/languages`.
    pub language: String,
    #[serde(default)]
    pub description: String,
}

/// Create a task with its language's default files.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = [])), request_body = CreateTask,
    responses((status = 201, body = TaskDetail), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_task(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateTask>,
) -> ApiResult<(StatusCode, Json<TaskDetail>)> {
    let name = TaskName::parse(&body.name)?;
    let description = Description::parse(&body.description)?;
    let (language, settings) = Language::parse(&body.language, &state.settings.languages)?;
    let limits = &state.settings.limits;
    let files = settings
        .default_files
        .iter()
        .map(|f| Ok((FilePath::parse(&f.path, limits)?, f.content.clone())))
        .collect::<Result<Vec<_>, coderun_shared::domain::Invalid>>()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("language default files: {e}")))?;
    let main_file = FilePath::parse(&settings.main_file, limits)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("language main file: {e}")))?;
    let task = tasks::create(
        &state.db,
        NewTask {
            owner_id: caller.id,
            name,
            language,
            description,
            main_file,
            files,
        },
        limits.max_tasks_per_user,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(detail(&state, task).await?)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTasksQuery {
    /// Page number, from 1.
    pub page: Option<i64>,
    /// Items per page, 1 to 100.
    pub per_page: Option<i64>,
    /// Only tasks in this language.
    pub language: Option<String>,
    /// Only tasks whose name contains this text (case-insensitive).
    pub q: Option<String>,
    /// Teachers and admins: list this user's tasks (a user id) instead of their own.
    pub owner: Option<Uuid>,
    /// The former name of `owner`, still accepted but no longer part of the contract.
    #[param(ignore)]
    pub owner_id: Option<Uuid>,
}

/// The caller's tasks, newest change first.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = [])), params(ListTasksQuery),
    responses((status = 200, body = Page<Task>), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListTasksQuery>,
) -> ApiResult<Json<Page<Task>>> {
    let page = PageRequest::parse(query.page, query.per_page, &state.settings.limits)?;
    if let Some(language) = &query.language {
        Language::parse(language, &state.settings.languages)?;
    }
    if query.q.as_ref().is_some_and(|q| q.chars().count() > 100) {
        return Err(ApiError::BadRequest(
            "q must be at most 100 characters long".into(),
        ));
    }
    let owner = match (query.owner, query.owner_id) {
        (Some(owner), Some(alias)) if owner != alias => {
            return Err(ApiError::BadRequest(
                "owner and owner_id name different users; give one of them".into(),
            ));
        }
        (owner, alias) => owner.or(alias),
    };
    let owner_id = match owner {
        Some(owner) if owner != caller.id && !caller.role.reads_everything() => {
            return Err(ApiError::Forbidden(
                "only teachers and admins may list other users' tasks",
            ));
        }
        Some(owner) => owner,
        None => caller.id,
    };
    let filter = TaskFilter {
        owner_id: Some(owner_id),
        language: query.language,
        q: query.q.filter(|q| !q.is_empty()),
    };
    let (items, total) = tasks::list(&state.db, &filter, page).await?;
    Ok(Json(Page::new(items, page, total)))
}

/// A task and its file tree (no contents).
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}", tag = "tasks", security(("bearer" = [])),
    params(("task_id" = Uuid, Path)),
    responses((status = 200, body = TaskDetail), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<Uuid>,
) -> ApiResult<Json<TaskDetail>> {
    let task = authorize(&state, &caller, task_id, Access::Read).await?;
    Ok(Json(detail(&state, task).await?))
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTask {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Must name an existing file of the task.
    pub main_file: Option<String>,
    /// A shell command run by `sh -c`; `null` returns to the language's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub command: Option<Option<String>>,
}

/// Rename, describe, set the main file or the default command.
#[utoipa::path(patch, path = "/api/v1/tasks/{task_id}", tag = "tasks", security(("bearer" = [])),
    params(("task_id" = Uuid, Path)), request_body = UpdateTask,
    responses((status = 200, body = TaskDetail), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)))]
pub async fn update_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<Uuid>,
    Json(body): Json<UpdateTask>,
) -> ApiResult<Json<TaskDetail>> {
    authorize(&state, &caller, task_id, Access::Write).await?;
    let limits = &state.settings.limits;
    let patch = TaskPatch {
        name: body.name.as_deref().map(TaskName::parse).transpose()?,
        description: body
            .description
            .as_deref()
            .map(Description::parse)
            .transpose()?,
        main_file: body
            .main_file
            .as_deref()
            .map(|p| FilePath::parse(p, limits))
            .transpose()?,
        command: match body.command {
            None => None,
            Some(None) => Some(None),
            Some(Some(c)) => Some(Some(Command::parse(&c)?)),
        },
    };
    let task = tasks::update(&state.db, task_id, patch).await?;
    Ok(Json(detail(&state, task).await?))
}

/// Delete a task and its files; refused (409) while one of its runs is active.
#[utoipa::path(delete, path = "/api/v1/tasks/{task_id}", tag = "tasks", security(("bearer" = [])),
    params(("task_id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    authorize(&state, &caller, task_id, Access::Write).await?;
    if coderun_shared::runs::task_has_active(&state.db, task_id).await? {
        return Err(ApiError::Conflict(
            "the task has an active run; stop it (or let it finish) before deleting the task"
                .into(),
        ));
    }
    if !tasks::delete(&state.db, task_id).await? {
        return Err(ApiError::not_found("task"));
    }
    Ok(StatusCode::NO_CONTENT)
}
