//! The consumer: one step reads one stream entry and hands its run to the executor.
//!
//! A step first reserves a capacity permit, then reads (so a full cluster leaves entries in the
//! stream), binds the permit to the run, launches, records `dispatched`, and only then
//! acknowledges: an entry is acked once its hand-off is durable, so a worker dying anywhere in
//! between leaves the entry pending for another worker to claim.
//!
//! Outages are waited out, never charged to a run: while a dependency's circuit breaker is open
//! a step reserves nothing and reads nothing (it probes the dependency when due); a hand-off
//! that fails for a transient reason before its launch gives the permit back and re-adds the
//! entry (so an outage does not count towards dead-lettering), and the steps after a launch
//! are retried until they go through.

use std::time::Instant;

use coderun_shared::queue::Entry;
use coderun_shared::runs::{self, Change, Reason, RunStatus};
use coderun_shared::semaphore::Grant;
use coderun_shared::transient::Dependency;
use fred::interfaces::ClientLike;
use uuid::Uuid;

use crate::context::Context;
use crate::executor::LaunchError;
use crate::metrics;
use crate::permits::Reservation;
use crate::resilience::classify;

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
    /// A dependency's breaker is open: nothing was reserved or read.
    Paused(Vec<Dependency>),
}

/// Crash points for the fault-injection tests: `worker.crash_at` names one and the worker
/// aborts there, exactly like a `kill -9` at that instant.
fn crash_point(ctx: &Context, point: &str) {
    if ctx.settings.worker.crash_at == point {
        tracing::warn!(point, "crashing on purpose (worker.crash_at)");
        std::process::abort();
    }
}

/// Counts a transient failure against its dependency's breaker, and passes the error on.
fn noted(ctx: &Context, e: anyhow::Error) -> anyhow::Error {
    if let Some(dep) = classify(&e) {
        ctx.resilience.failure(dep, &e);
    }
    e
}

/// Probes the dependencies whose breaker is due for it; returns those still open, if any.
pub async fn paused(ctx: &Context) -> Option<Vec<Dependency>> {
    for dep in ctx.resilience.due_probes() {
        match probe(ctx, dep).await {
            Ok(()) => {
                ctx.resilience.success(dep);
                if dep == Dependency::Redis {
                    settle_permits(ctx);
                }
            }
            Err(e) => ctx.resilience.failure(dep, &e),
        }
    }
    let open = ctx.resilience.open();
    if !open.is_empty() {
        return Some(open);
    }
    ctx.resilience.settling().then(|| vec![Dependency::Redis])
}

/// After Redis was unreachable (or restarted), new work waits until every worker's heartbeat
/// has renewed — re-created, if Redis lost them — the permits of the runs really executing, so
/// capacity is never exceeded by seats that only looked free.
pub fn settle_permits(ctx: &Context) {
    // A live worker beats at least once per heartbeat TTL; one period more covers a beat that
    // was waiting for the reconnection.
    let worker = &ctx.settings.worker;
    let wait = std::time::Duration::from_secs(
        worker.heartbeat_ttl_seconds.max(1) + worker.heartbeat_seconds.max(1),
    );
    tracing::info!(
        ?wait,
        "Redis is back: waiting for the fleet to renew its permits before taking work"
    );
    ctx.resilience.settle(wait);
}

/// One cheap request that only a working dependency answers.
async fn probe(ctx: &Context, dep: Dependency) -> anyhow::Result<()> {
    match dep {
        Dependency::Postgres => {
            coderun_shared::db::ping(&ctx.db).await?;
        }
        Dependency::Redis => {
            let _: String = ctx.redis.ping(None).await?;
        }
        Dependency::S3 => ctx.storage.check().await?,
        Dependency::Kubernetes => ctx.executor.probe().await?,
    }
    Ok(())
}

/// Reserve, read one new entry, handle it — unless a breaker is open.
pub async fn process_next(ctx: &Context) -> anyhow::Result<Outcome> {
    if let Some(open) = paused(ctx).await {
        return Ok(Outcome::Paused(open));
    }
    let reserved = ctx
        .permits
        .reserve()
        .await
        .map_err(|e| noted(ctx, e.into()))?;
    ctx.resilience.success(Dependency::Redis);
    let Some(reservation) = reserved else {
        return Ok(Outcome::NoCapacity);
    };
    let read = ctx.queue.read_new(&ctx.reader, &ctx.name).await;
    let outcome = match read {
        Ok(Some(entry)) => handle_entry(ctx, &entry, Some(&reservation)).await,
        Ok(None) => Ok(Outcome::Idle),
        Err(e) => {
            if e.details().starts_with("NOGROUP") {
                // Redis restarted without its last writes, the consumer group among them.
                if let Err(e) = ctx.queue.ensure_group().await {
                    tracing::warn!(error = %e, "cannot create the consumer group again");
                }
            }
            Err(noted(ctx, e.into()))
        }
    };
    ctx.permits.cancel(reservation).await;
    outcome
}

/// Handles one delivered entry. `reservation` is the permit reserved before reading it;
/// entries claimed from other consumers come without one and acquire directly.
pub async fn handle_entry(
    ctx: &Context,
    entry: &Entry,
    reservation: Option<&Reservation>,
) -> anyhow::Result<Outcome> {
    let Some(run_id) = entry.run_id else {
        ctx.queue
            .dead_letter(entry, "the entry names no run")
            .await?;
        metrics::dead_lettered();
        return Ok(Outcome::DeadLettered(entry.id.clone()));
    };
    let mut holds_permit = false;
    match hand_off(ctx, entry, run_id, reservation, &mut holds_permit).await {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            let Some(dep) = classify(&e) else {
                return Err(e);
            };
            // The run stays queued: its permit goes back, and its entry is re-added (unless
            // Redis itself failed: then it stays pending and is claimed again later).
            ctx.resilience.failure(dep, &e);
            if holds_permit && let Err(e) = ctx.permits.release(run_id).await {
                tracing::debug!(%run_id, error = %e, "cannot give the permit back; it expires");
            }
            if dep != Dependency::Redis {
                requeue(ctx, entry, run_id).await;
            }
            Ok(Outcome::Deferred(format!(
                "{dep} is unavailable ({e:#}); the run stays queued"
            )))
        }
    }
}

/// Re-adds the run's entry and acknowledges this one: the run is tried again with a fresh
/// delivery count. A crash in between leaves two entries, and the second is skipped.
async fn requeue(ctx: &Context, entry: &Entry, run_id: Uuid) {
    match ctx.queue.enqueue(run_id).await {
        Ok(_) => {
            if let Err(e) = ctx.queue.ack(&entry.id).await {
                tracing::debug!(%run_id, error = %e, "cannot ack a re-added entry");
            }
        }
        Err(e) => tracing::debug!(%run_id, error = %e, "cannot re-add the entry; it stays pending"),
    }
}

/// The hand-off proper: errors before the launch leave the run queued (see [`handle_entry`]).
async fn hand_off(
    ctx: &Context,
    entry: &Entry,
    run_id: Uuid,
    reservation: Option<&Reservation>,
    holds_permit: &mut bool,
) -> anyhow::Result<Outcome> {
    let run = match runs::get(&ctx.db, run_id).await? {
        Some(run) if run.status == RunStatus::Queued => run,
        other => {
            // Stream entries are hints; Postgres is the truth.
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
        let failed = runs::transition_from(
            &ctx.db,
            run_id,
            &[RunStatus::Queued],
            RunStatus::Failed,
            &change,
        )
        .await?;
        ctx.queue.dead_letter(entry, &reason).await?;
        metrics::dead_lettered();
        if failed {
            metrics::run_ended(RunStatus::Failed, Some(Reason::DeadLettered));
        }
        return Ok(Outcome::DeadLettered(entry.id.clone()));
    }

    let wall = run.spec.limits.wall_seconds;
    match ctx.permits.acquire(run_id, wall, reservation).await? {
        Grant::Granted => *holds_permit = true,
        Grant::Full => return Ok(Outcome::Deferred("no capacity for a claimed entry".into())),
        Grant::HeldBy(holder) => {
            if ctx.liveness.is_alive(&holder).await? {
                // Another live worker holds this run: it may be mid hand-off, or this entry is
                // a duplicate. Leave the entry pending; once the run has moved on it is skipped.
                return Ok(Outcome::Deferred(format!(
                    "run {run_id} is held by {holder}"
                )));
            }
            match ctx
                .permits
                .take_over(run_id, wall, Some(&holder), reservation)
                .await?
            {
                Grant::Granted => {
                    *holds_permit = true;
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

    let kind = ctx.executor.kind();
    let preparing = Instant::now();
    let prepared = match ctx.executor.prepare(&run).await {
        Ok(prepared) => prepared,
        Err(LaunchError::Retryable(why)) => {
            // Not launched: the permit goes back and the entry is re-added, so a busy or
            // briefly unreachable executor never counts towards dead-lettering.
            metrics::executor_error(kind, "launch_retryable");
            ctx.permits.release(run_id).await?;
            requeue(ctx, entry, run_id).await;
            return Ok(Outcome::Deferred(why));
        }
        Err(LaunchError::Permanent(why)) => {
            metrics::executor_error(kind, "launch_permanent");
            let change = Change::by(format!("worker:{}", ctx.name))
                .detail(&why)
                .reason(Reason::LaunchFailed);
            if runs::transition(&ctx.db, run_id, RunStatus::Failed, &change).await? {
                metrics::run_ended(RunStatus::Failed, Some(Reason::LaunchFailed));
            }
            ctx.permits.release(run_id).await?;
            ctx.queue.ack(&entry.id).await?;
            return Ok(Outcome::Failed(run_id));
        }
    };

    let change = Change {
        worker: Some(ctx.name.clone()),
        executor: Some(kind.as_str().to_owned()),
        ..Change::by(format!("worker:{}", ctx.name)).detail(format!("launched by {}", ctx.name))
    };
    // The execution exists now: from here on a transient failure is waited out, not undone
    // (the transition is idempotent, so a retry after a lost answer finds it done).
    let change = &change;
    let dispatched = ctx
        .resilience
        .retry("record dispatched", || async move {
            Ok(runs::transition(&ctx.db, run_id, RunStatus::Dispatched, change).await?)
        })
        .await;
    let dispatched = match dispatched {
        Ok(dispatched) => dispatched,
        Err(e) => {
            prepared.discard().await;
            return Err(e);
        }
    };
    if !dispatched {
        let now = ctx
            .resilience
            .retry("read the run", || async move {
                Ok(runs::get(&ctx.db, run_id).await?.map(|r| r.status))
            })
            .await?;
        if matches!(now, Some(RunStatus::Canceled) | None) {
            // Stop wins: a run canceled while queued never runs.
            prepared.discard().await;
            ctx.permits.release(run_id).await?;
            ctx.queue.ack(&entry.id).await?;
            return Ok(Outcome::Skipped(format!(
                "run {run_id} was canceled before it started"
            )));
        }
    }
    crash_point(ctx, "after_launch");
    prepared.start().await;
    let waited = (chrono::Utc::now() - run.queued_at).to_std().ok();
    metrics::launched(kind, preparing.elapsed(), waited);
    // Unacknowledged, the entry would be claimed later and skipped (the run is dispatched).
    if let Err(e) = ctx.queue.ack(&entry.id).await {
        tracing::warn!(%run_id, error = %e, "cannot ack a launched run's entry; it will be skipped");
    }
    Ok(Outcome::Launched(run_id))
}
