//! Authorisation of tasks and runs: an owner may do anything with what they own; teachers and
//! admins may read everyone's but change nothing of others'; anyone else is told the thing
//! does not exist, so its existence is not revealed.

use sqlx::PgPool;
use uuid::Uuid;

use super::Error;
use crate::domain::Role;
use crate::runs::{self, Run};
use crate::tasks::{self, Task};

/// Who acts: the caller as the edge authenticated them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub id: Uuid,
    pub role: Role,
}

/// What the actor is about to do with a task or run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The rule for something owned by `owner_id`: `Ok` when allowed, else the refusal (`what`
/// names the thing, `forbidden` is told to staff attempting a write).
fn check(
    actor: &Actor,
    owner_id: Uuid,
    access: Access,
    what: &'static str,
    forbidden: &'static str,
) -> Result<(), Error> {
    if owner_id == actor.id {
        return Ok(());
    }
    if actor.role.reads_everything() {
        return match access {
            Access::Read => Ok(()),
            Access::Write => Err(Error::Forbidden(forbidden)),
        };
    }
    Err(Error::NotFound(what))
}

/// Loads a task the actor may use for `access`.
pub async fn task(
    db: &PgPool,
    actor: &Actor,
    task_id: Uuid,
    access: Access,
) -> Result<Task, Error> {
    let task = tasks::get(db, task_id)
        .await?
        .ok_or(Error::NotFound("task"))?;
    task_rule(actor, task.owner_id, access)?;
    Ok(task)
}

/// The rule for a task owned by `owner_id`, for callers that read the task (or its owner)
/// themselves, in the same query as something else.
pub fn task_rule(actor: &Actor, owner_id: Uuid, access: Access) -> Result<(), Error> {
    check(
        actor,
        owner_id,
        access,
        "task",
        "teachers and admins may read other users' tasks but not change them",
    )
}

/// Loads a run the actor may use for `access`.
pub async fn run(db: &PgPool, actor: &Actor, run_id: Uuid, access: Access) -> Result<Run, Error> {
    let run = runs::get(db, run_id).await?.ok_or(Error::NotFound("run"))?;
    check(
        actor,
        run.owner_id,
        access,
        "run",
        "teachers and admins may read other users' runs but not stop or retry them",
    )?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_do_anything_staff_only_read_others_see_nothing() {
        let owner = Uuid::new_v4();
        let actor = |id, role| Actor { id, role };
        let stranger = Uuid::new_v4();
        for access in [Access::Read, Access::Write] {
            assert!(check(&actor(owner, Role::Student), owner, access, "task", "no").is_ok());
            assert!(matches!(
                check(&actor(stranger, Role::Student), owner, access, "task", "no"),
                Err(Error::NotFound("task"))
            ));
        }
        for role in [Role::Teacher, Role::Admin] {
            assert!(check(&actor(stranger, role), owner, Access::Read, "run", "no").is_ok());
            assert!(matches!(
                check(&actor(stranger, role), owner, Access::Write, "run", "no"),
                Err(Error::Forbidden("no"))
            ));
        }
    }
}
