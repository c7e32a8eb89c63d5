//! The consumer: one step reads one stream entry and hands its run to the executor.
//!
//! A step first reserves a capacity permit, then reads (so a full cluster leaves entries in the
//! stream), binds the permit to the run, launches, records `dispatched`, and only then
//! acknowledges: an entry is acked once its hand-off is durable, so a worker dying anywhere in
//! between leaves the entry pending for another worker to claim.

use coderun_shared::queue::Entry;
use coderun_shared::runs::{self, Change, Reason, RunStatus};
use coderun_shared::semaphore::{Grant, LeaseSemaphore};
use uuid::Uuid;

use crate::context::Context;
use crate::executor::LaunchError;

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No entry arrived while the read blocked.
    Idle,
    /// Every permit is taken: nothing was read.
    NoCapacity,
    /// The run was launched and its entry acknowledged.
    Launched(Uuid),
    /// The entry was acknowledged without a launch (run gone, not queued, or held elsewhere).
    Skipped(String),
    /// The entry went to the dead-letter stream.
    DeadLettered(String),
    /// The entry stays pending to be delivered again (retryable failure, or capacity vanished).
    Deferred(String),
    /// The run failed to launch for good and is marked `launch_failed`.
    Failed(Uuid),
}

/// Crash points for the fault-injection tests: `worker.crash_at` names one and the worker
/// aborts there, exactly like a `kill -9` at that instant.
fn crash_point(ctx: &Context, point: &str) {
    if ctx.settings.worker.crash_at == point {
        tracing::warn!(point, "crashing on purpose (worker.crash_at)");
        std::process::abort();
    }
}

/// Reserve, read one new entry, handle it.
pub async fn process_next(ctx: &Context) -> anyhow::Result<Outcome> {
    let reservation = LeaseSemaphore::reservation(&ctx.name);
    match ctx
        .semaphore
        .acquire(&reservation, &ctx.name, ctx.reservation_ttl_ms())
        .await?
    {
        Grant::Granted => {}
        Grant::Full | Grant::HeldBy(_) => return Ok(Outcome::NoCapacity),
    }
    let read = ctx.queue.read_new(&ctx.reader, &ctx.name).await;
    let outcome = match read {
        Ok(Some(entry)) => handle_entry(ctx, &entry, Some(&reservation)).await,
        Ok(None) => Ok(Outcome::Idle),
        Err(e) => Err(e.into()),
    };
    // A no-op once the reservation became the run's permit.
    ctx.semaphore.release(&reservation).await?;
    outcome
}

/// Handles one delivered entry. `reservation` is the permit reserved before reading it;
/// entries claimed from other consumers come without one and acquire directly.
pub async fn handle_entry(
    ctx: &Context,
    entry: &Entry,
    reservation: Option<&str>,
) -> anyhow::Result<Outcome> {
    let Some(run_id) = entry.run_id else {
        ctx.queue
            .dead_letter(entry, "the entry names no run")
            .await?;
        return Ok(Outcome::DeadLettered(entry.id.clone()));
    };
    let run = match runs::get(&ctx.db, run_id).await? {
        Some(run) if run.status == RunStatus::Queued => run,
        other => {
            // Stream entries are hints; Postgres is the truth (invariant 1).
            ctx.queue.ack(&entry.id).await?;
            let why = match other {
                Some(run) => format!("run {run_id} is {}", run.status.as_str()),
                None => format!("run {run_id} no longer exists"),
            };
            return Ok(Outcome::Skipped(why));
        }
    };
    let deliveries = ctx.queue.deliveries(&entry.id).await?;
    if deliveries > ctx.settings.queue.max_deliveries {
        let reason = format!("delivered {deliveries} times without being handed off");
        let change = Change::by(format!("worker:{}", ctx.name))
            .detail(&reason)
            .reason(Reason::DeadLettered);
        // Only a run still queued fails: a duplicate entry never touches a launched run.
        runs::transition_from(
            &ctx.db,
            run_id,
            &[RunStatus::Queued],
            RunStatus::Failed,
            &change,
        )
        .await?;
        ctx.queue.dead_letter(entry, &reason).await?;
        return Ok(Outcome::DeadLettered(entry.id.clone()));
    }

    let ttl = ctx.lease_ttl_ms(run.spec.limits.wall_seconds);
    let grant = match reservation {
        Some(reservation) => {
            ctx.semaphore
                .bind(reservation, run_id, &ctx.name, ttl)
                .await?
        }
        None => {
            ctx.semaphore
                .acquire(&run_id.to_string(), &ctx.name, ttl)
                .await?
        }
    };
    match grant {
        Grant::Granted => {}
        Grant::Full => return Ok(Outcome::Deferred("no capacity for a claimed entry".into())),
        Grant::HeldBy(holder) => {
            if crate::heartbeat::is_alive(ctx, &holder).await? {
                // Another live worker holds this run: it may be mid hand-off, or this entry is
                // a duplicate. Leave the entry pending; once the run has moved on it is skipped.
                return Ok(Outcome::Deferred(format!(
                    "run {run_id} is held by {holder}"
                )));
            }
            match ctx
                .semaphore
                .take_over(run_id, &holder, &ctx.name, ttl, reservation)
                .await?
            {
                Grant::Granted => {
                    tracing::info!(%run_id, dead = %holder, "took over the permit of a dead worker")
                }
                _ => {
                    ctx.queue.ack(&entry.id).await?;
                    return Ok(Outcome::Skipped(format!(
                        "run {run_id} was taken by another worker"
                    )));
                }
            }
        }
    }
    crash_point(ctx, "after_permit");

    match ctx.executor.launch(&run).await {
        Ok(()) => {}
        Err(LaunchError::Retryable(why)) => {
            ctx.semaphore.release(&run_id.to_string()).await?;
            return Ok(Outcome::Deferred(why));
        }
        Err(LaunchError::Permanent(why)) => {
            let change = Change::by(format!("worker:{}", ctx.name))
                .detail(&why)
                .reason(Reason::LaunchFailed);
            runs::transition(&ctx.db, run_id, RunStatus::Failed, &change).await?;
            ctx.semaphore.release(&run_id.to_string()).await?;
            ctx.queue.ack(&entry.id).await?;
            return Ok(Outcome::Failed(run_id));
        }
    }

    let change = Change {
        worker: Some(ctx.name.clone()),
        executor: Some(ctx.executor.kind().to_owned()),
        ..Change::by(format!("worker:{}", ctx.name)).detail(format!("launched by {}", ctx.name))
    };
    let dispatched = runs::transition(&ctx.db, run_id, RunStatus::Dispatched, &change).await?;
    if !dispatched {
        let now = runs::get(&ctx.db, run_id).await?.map(|r| r.status);
        if matches!(now, Some(RunStatus::Canceled) | None) {
            // Stopped while queued: it must never run (invariant 6).
            ctx.executor.start(run_id, false).await;
            ctx.semaphore.release(&run_id.to_string()).await?;
            ctx.queue.ack(&entry.id).await?;
            return Ok(Outcome::Skipped(format!(
                "run {run_id} was canceled before it started"
            )));
        }
    }
    crash_point(ctx, "after_launch");
    ctx.executor.start(run_id, true).await;
    ctx.queue.ack(&entry.id).await?;
    Ok(Outcome::Launched(run_id))
}
