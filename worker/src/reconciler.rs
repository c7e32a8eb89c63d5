//! The reconciler repairs what crashes and lost messages leave behind, from Postgres (the
//! truth): a queued run whose stream entry is gone is enqueued again; a launched run whose
//! execution died with its worker is attempted again from the same snapshot while it has
//! attempts left (`runs.max_attempts`), and then ends `executor_lost` — or `stopped` if it was
//! being stopped; a run whose execution outlives its worker (a Job) is lost only when the
//! execution itself no longer exists, and then ends at once. Permits of finished runs and of
//! dead workers' reservations are released. Every action is idempotent, so all workers may
//! reconcile at once.

use std::time::Duration;

use chrono::Utc;
use coderun_shared::runs::{self, Change, Reason, Run, RunStatus};
use coderun_shared::semaphore::Member;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::Context;
use crate::executor::Durability;
use crate::metrics;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub requeued: Vec<Uuid>,
    /// Runs lost with their worker and queued for another attempt.
    pub reattempted: Vec<Uuid>,
    pub lost: Vec<Uuid>,
    pub released: Vec<String>,
    /// Step runs queued by advancing a stalled pipeline run.
    pub advanced: Vec<Uuid>,
}

/// A launched run younger than this is not judged lost by its own worker: its hand-off may
/// still be in flight.
const HANDOFF_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

pub async fn reconcile(ctx: &Context) -> anyhow::Result<Report> {
    let mut report = Report::default();
    // Liveness is read from heartbeats in Redis: right after Redis was unreachable (or lost
    // writes) a live worker's heartbeat may have lapsed, and judging now would end — or start
    // again — runs that are still executing. Wait until every worker has beaten again.
    if ctx.resilience.settling() || !ctx.resilience.open().is_empty() {
        return Ok(report);
    }
    let active = runs::active(&ctx.db).await?;
    let requeue_after = chrono::TimeDelta::seconds(ctx.settings.runs.requeue_after_seconds as i64);
    let now = Utc::now();

    let stale_queued: Vec<&Run> = active
        .iter()
        .filter(|r| r.status == RunStatus::Queued && now - r.queued_at > requeue_after)
        .collect();
    if !stale_queued.is_empty() {
        let backlog = ctx.queue.backlog().await?;
        // While unread entries remain, a queued run may simply be waiting its turn.
        if backlog.all_delivered {
            for run in stale_queued {
                if backlog.pending_runs.contains(&run.id) || !claim_requeue(ctx, run.id).await? {
                    continue;
                }
                ctx.queue.enqueue(run.id).await?;
                tracing::warn!(run = %run.id, "re-enqueued a queued run whose stream entry was lost");
                report.requeued.push(run.id);
            }
        }
    }

    // Pipeline runs none of whose steps is active yet that are not finished: an advance the
    // trigger could not make (it always can; this is the safety net). Idempotent.
    for run in
        coderun_shared::pipelines::advance_stalled(&ctx.db, &format!("reconciler:{}", ctx.name))
            .await?
    {
        if let Err(e) = ctx.queue.enqueue(run).await {
            tracing::warn!(%run, error = %e, "cannot enqueue a step run of a stalled pipeline run");
        }
        report.advanced.push(run);
    }

    for run in active.iter().filter(|r| r.status != RunStatus::Queued) {
        let Some(worker) = run.worker.as_deref() else {
            continue;
        };
        let launched_at = run.dispatched_at.unwrap_or(run.queued_at);
        let ours = run.executor.as_deref() == Some(ctx.executor.kind().as_str());
        let durability = if ours {
            ctx.executor.durability()
        } else {
            // Launched by another kind of executor (a fleet being switched over): only its
            // worker's liveness can be judged from here.
            Durability::DiesWithWorker
        };
        let adopted = durability == Durability::OutlivesWorker;
        let lost = match durability {
            // Lost only once the execution is gone, whoever launched it.
            Durability::OutlivesWorker => {
                now - launched_at > HANDOFF_GRACE && ctx.executor.exists(run).await == Some(false)
            }
            Durability::DiesWithWorker if worker == ctx.name => {
                !ctx.executor.has(run.id) && now - launched_at > HANDOFF_GRACE
            }
            Durability::DiesWithWorker => !ctx.liveness.is_alive(worker).await?,
        };
        if !lost {
            continue;
        }
        let source = format!("reconciler:{}", ctx.name);
        let detail = if adopted {
            "its execution is gone".to_owned()
        } else {
            format!("its worker {worker} is gone or lost the execution")
        };
        if run.status != RunStatus::Stopping && !adopted {
            // Whatever the dead worker left on this host dies before the next attempt may
            // start, so two executions of the run never overlap.
            ctx.executor.reap(run.id).await;
            let max = ctx.settings.runs.max_attempts;
            if let Some(attempt) = runs::reattempt(&ctx.db, run.id, max, &source, &detail).await? {
                ctx.permits.release(run.id).await?;
                // The next attempt's log starts over at line 1.
                let cleared: Result<(), _> = ctx.redis.del(ctx.keys.live_log(run.id)).await;
                if let Err(e) = cleared {
                    tracing::warn!(run = %run.id, error = %e, "cannot clear the lost attempt's live log");
                }
                if let Err(e) = ctx.queue.enqueue(run.id).await {
                    // The row says queued: the requeue pass above repairs a lost entry.
                    tracing::warn!(run = %run.id, error = %e, "cannot enqueue the next attempt");
                }
                tracing::warn!(run = %run.id, %worker, attempt, "attempting a run lost with its worker again");
                report.reattempted.push(run.id);
                continue;
            }
        }
        let (ended_as, reason, detail) = match (run.status, adopted) {
            (RunStatus::Stopping, _) => (RunStatus::Stopped, Reason::StoppedByUser, detail),
            (_, true) => (RunStatus::Failed, Reason::ExecutorLost, detail),
            (_, false) => (
                RunStatus::Failed,
                Reason::ExecutorLost,
                format!(
                    "{detail} (attempt {} of {})",
                    run.attempt, ctx.settings.runs.max_attempts
                ),
            ),
        };
        let change = Change::by(source).detail(detail).reason(reason);
        let ended = runs::transition(&ctx.db, run.id, ended_as, &change).await?;
        if ended {
            tracing::warn!(run = %run.id, %worker, "ended a run whose execution was lost");
            metrics::run_ended(ended_as, Some(reason));
            report.lost.push(run.id);
        }
        if !adopted {
            ctx.executor.reap(run.id).await;
        }
        ctx.permits.release(run.id).await?;
    }

    for holding in ctx.permits.holders().await? {
        let release = match holding.member {
            Member::Run(run) => match runs::get(&ctx.db, run).await? {
                Some(run) => run.status.is_terminal(),
                None => true,
            },
            Member::Reservation(_) => {
                holding.owner != ctx.name && !ctx.liveness.is_alive(&holding.owner).await?
            }
        };
        if release {
            ctx.permits.release_stale(&holding.member).await?;
            report.released.push(holding.member.key());
        }
    }
    metrics::repaired("requeued", report.requeued.len());
    metrics::repaired("reattempted", report.reattempted.len());
    metrics::repaired("lost", report.lost.len());
    metrics::repaired("released", report.released.len());
    metrics::repaired("advanced", report.advanced.len());
    Ok(report)
}

/// Only one reconciler re-enqueues a given run per `requeue_after_seconds`.
async fn claim_requeue(ctx: &Context, run: Uuid) -> anyhow::Result<bool> {
    let key = format!("{}:requeued:{run}", ctx.settings.redis.prefix);
    let ttl = ctx.settings.runs.requeue_after_seconds.max(1) as i64;
    let set: Option<String> = ctx
        .redis
        .set(
            key,
            "1",
            Some(Expiration::EX(ttl)),
            Some(SetOptions::NX),
            false,
        )
        .await?;
    Ok(set.is_some())
}

/// Reconciles every `reconcile_seconds` until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let period = Duration::from_secs(ctx.settings.worker.reconcile_seconds.max(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        match reconcile(&ctx).await {
            Ok(report) if report != Report::default() => tracing::info!(?report, "reconciled"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciling failed"),
        }
    }
}
