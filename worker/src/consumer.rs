//! The consumer: one step reads a batch of stream entries and hands their runs to the executor.
//!
//! A step first reserves capacity permits — up to `queue.read_batch`, as many as are free, in
//! one call — then reads at most that many entries without waiting (so a full cluster leaves
//! entries in the stream; an empty stream is waited on holding one seat only), reads their runs in one query, binds the permits to the runs in one call, creates
//! the executions in parallel, records `dispatched` for the batch in one statement, starts them,
//! and only then acknowledges the batch in one XACK: an entry is acked once its hand-off is
//! durable, so a worker dying anywhere in between leaves the entries pending for another worker
//! to claim, which finds each run queued (launched again: preparing gives back the execution
//! that exists) or dispatched (skipped). Entries claimed from other consumers go one at a time
//! through the same launch ([`handle_entry`]).
//!
//! Outages are waited out, never charged to a run: while a dependency's circuit breaker is open
//! a step reserves nothing and reads nothing (it probes the dependency when due); a hand-off
//! that fails for a transient reason before its launch gives the permit back and re-adds the
//! entry (so an outage does not count towards dead-lettering), and the steps after a launch
//! are retried until they go through.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use coderun_shared::queue::Entry;
use coderun_shared::runs::{self, Change, Reason, Run, RunStatus};
use coderun_shared::semaphore::Grant;
use coderun_shared::transient::Dependency;
use fred::interfaces::ClientLike;
use uuid::Uuid;

use crate::context::Context;
use crate::executor::{LaunchError, Prepared};
use crate::metrics;
use crate::permits::Reservation;
use crate::resilience::classify;

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No entry arrived while the read blocked.
    Idle,
    /// Every permit is taken: nothing was read.
    NoCapacity,
    /// A dependency's breaker is open: nothing was reserved or read.
    Paused(Vec<Dependency>),
    /// Entries were read and handled: what became of each, in stream order.
    Handled(Vec<Outcome>),
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
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

/// Reserve up to `queue.read_batch` permits, read as many new entries, hand them off — unless
/// a breaker is open.
pub async fn process_next(ctx: &Context) -> anyhow::Result<Step> {
    if let Some(open) = paused(ctx).await {
        return Ok(Step::Paused(open));
    }
    let reserving = Instant::now();
    let mut reservations = ctx
        .permits
        .reserve_many(ctx.settings.queue.read_batch.max(1))
        .await
        .map_err(|e| noted(ctx, e.into()))?;
    let reserved = reserving.elapsed();
    ctx.resilience.success(Dependency::Redis);
    if reservations.is_empty() {
        return Ok(Step::NoCapacity);
    }
    // What is waiting is read at once, a seat for each entry. Only an empty stream is waited
    // on, and with a single seat: seats held through a blocking read would starve the janitor
    // and the other workers.
    let mut read = Ok(Vec::new());
    if reservations.len() > 1 {
        read = ctx
            .queue
            .read_new(&ctx.reader, &ctx.name, reservations.len() as u64, false)
            .await;
    }
    if matches!(&read, Ok(entries) if entries.is_empty()) {
        let spare = reservations.split_off(1);
        ctx.permits.cancel_many(spare).await;
        read = ctx.queue.read_new(&ctx.reader, &ctx.name, 1, true).await;
    }
    let read_in = reserving.elapsed() - reserved;
    let step = match read {
        Ok(entries) if entries.is_empty() => Ok(Step::Idle),
        Ok(entries) => {
            let handled = handle_batch(ctx, &entries, &reservations).await;
            // Where a batch's time goes (`--kube-log-filter` of the bench shows these).
            tracing::debug!(
                batch = entries.len(),
                seats = reservations.len(),
                reserve_us = reserved.as_micros() as u64,
                read_us = read_in.as_micros() as u64,
                handle_us = (reserving.elapsed() - reserved - read_in).as_micros() as u64,
                "batch handed off"
            );
            handled.map(Step::Handled)
        }
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
    // Seats not bound to a run go back (a bound one is no reservation any more: a no-op).
    ctx.permits.cancel_many(reservations).await;
    step
}

/// A run whose permit this worker holds, ready to launch.
struct Ready<'a> {
    entry: &'a Entry,
    run: Run,
}

/// Why an entry's run is not handed off: it is not queued (any more).
fn not_queued(run_id: Uuid, now: Option<Run>) -> Outcome {
    Outcome::Skipped(match now {
        Some(run) => format!("run {run_id} is {}", run.status.as_str()),
        None => format!("run {run_id} no longer exists"),
    })
}

/// Hands off freshly read entries together, each with a reservation of its own
/// (`reservations` holds at least one per entry). A fresh read is each entry's first delivery,
/// so none is due for dead-lettering yet.
async fn handle_batch(
    ctx: &Context,
    entries: &[Entry],
    reservations: &[Reservation],
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; entries.len()];
    let mut acks = Vec::new();
    let mut wanted: Vec<(usize, Uuid)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        match entry.run_id {
            None => {
                ctx.queue
                    .dead_letter(entry, "the entry names no run")
                    .await?;
                metrics::dead_lettered();
                outcomes[i] = Some(Outcome::DeadLettered(entry.id.clone()));
            }
            Some(run) if !seen.insert(run) => {
                // A re-added entry read with its original: the first one hands the run off.
                acks.push(entry.id.clone());
                outcomes[i] = Some(Outcome::Skipped(format!(
                    "run {run} is named twice in one read"
                )));
            }
            Some(run) => wanted.push((i, run)),
        }
    }

    let mut ready: Vec<(usize, Ready)> = Vec::new();
    let binding = Instant::now();
    let bound = bind_batch(
        ctx,
        entries,
        reservations,
        &wanted,
        &mut outcomes,
        &mut acks,
        &mut ready,
    )
    .await;
    if let Err(e) = bound {
        // Whatever is not settled yet stays queued.
        let held: Vec<Uuid> = ready.iter().map(|(_, r)| r.run.id).collect();
        let pending: Vec<(usize, Uuid)> = wanted
            .iter()
            .filter(|(i, _)| outcomes[*i].is_none())
            .copied()
            .collect();
        let pairs: Vec<(&Entry, Uuid)> = pending.iter().map(|(i, r)| (&entries[*i], *r)).collect();
        let deferred = settle_error(ctx, e, &pairs, &held).await?;
        for ((i, _), outcome) in pending.iter().zip(deferred) {
            outcomes[*i] = Some(outcome);
        }
        if let Err(e) = ctx.queue.ack_all(&acks).await {
            tracing::debug!(error = %e, "cannot ack skipped entries; they are skipped again");
        }
        return Ok(outcomes.into_iter().flatten().collect());
    }
    crash_point(ctx, "after_permit");
    let bound_in = binding.elapsed();

    let (indices, ready): (Vec<usize>, Vec<Ready>) = ready.into_iter().unzip();
    match launch(ctx, &ready, &mut acks).await {
        Ok(launched) => {
            for (i, outcome) in indices.iter().zip(launched) {
                outcomes[*i] = Some(outcome);
            }
        }
        Err(e) => {
            let held: Vec<Uuid> = ready.iter().map(|r| r.run.id).collect();
            let pairs: Vec<(&Entry, Uuid)> = ready.iter().map(|r| (r.entry, r.run.id)).collect();
            let deferred = settle_error(ctx, e, &pairs, &held).await?;
            for (i, outcome) in indices.iter().zip(deferred) {
                outcomes[*i] = Some(outcome);
            }
        }
    }
    crash_point(ctx, "before_ack");
    let acking = Instant::now();
    // Unacknowledged, the entries would be claimed later and skipped (their runs have moved on).
    if let Err(e) = ctx.queue.ack_all(&acks).await {
        tracing::warn!(error = %e, "cannot ack handed-off entries; they will be skipped");
    }
    tracing::debug!(
        runs = ready.len(),
        bind_us = bound_in.as_micros() as u64,
        launch_us = (acking - binding - bound_in).as_micros() as u64,
        ack_us = acking.elapsed().as_micros() as u64,
        "batch settled"
    );
    Ok(outcomes.into_iter().flatten().collect())
}

/// Reads the runs of `wanted` in one query and binds the reservations to the queued ones in one
/// call: those whose permit this worker now holds go to `ready`, the others are settled in
/// `outcomes` (and `acks`).
async fn bind_batch<'a>(
    ctx: &Context,
    entries: &'a [Entry],
    reservations: &[Reservation],
    wanted: &[(usize, Uuid)],
    outcomes: &mut [Option<Outcome>],
    acks: &mut Vec<String>,
    ready: &mut Vec<(usize, Ready<'a>)>,
) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = wanted.iter().map(|(_, id)| *id).collect();
    let mut found: HashMap<Uuid, Run> = runs::get_many(&ctx.db, &ids)
        .await?
        .into_iter()
        .map(|run| (run.id, run))
        .collect();
    let mut queued = Vec::new();
    for (i, id) in wanted {
        match found.remove(id) {
            Some(run) if run.status == RunStatus::Queued => queued.push((*i, run)),
            // Stream entries are hints; Postgres is the truth.
            other => {
                acks.push(entries[*i].id.clone());
                outcomes[*i] = Some(not_queued(*id, other));
            }
        }
    }
    let asks: Vec<(Uuid, u32, &Reservation)> = queued
        .iter()
        .zip(reservations)
        .map(|((_, run), reservation)| (run.id, run.spec.limits.wall_seconds, reservation))
        .collect();
    let grants = ctx.permits.acquire_many(&asks).await?;
    for (((i, run), grant), reservation) in queued.into_iter().zip(grants).zip(reservations) {
        let entry = &entries[i];
        let wall = run.spec.limits.wall_seconds;
        match contend(ctx, entry, run.id, wall, Some(reservation), grant).await? {
            None => ready.push((i, Ready { entry, run })),
            Some(outcome) => outcomes[i] = Some(outcome),
        }
    }
    Ok(())
}

/// What a transient failure of a hand-off leaves: the runs stay queued, the permits `held` go
/// back, and the entries are re-added (unless Redis itself failed: then they stay pending and
/// are claimed again later). Other errors are passed on.
async fn settle_error(
    ctx: &Context,
    e: anyhow::Error,
    pending: &[(&Entry, Uuid)],
    held: &[Uuid],
) -> anyhow::Result<Vec<Outcome>> {
    let Some(dep) = classify(&e) else {
        return Err(e);
    };
    ctx.resilience.failure(dep, &e);
    if let Err(e) = ctx.permits.release_many(held).await {
        tracing::debug!(?held, error = %e, "cannot give the permits back; they expire");
    }
    if dep != Dependency::Redis {
        for (entry, run_id) in pending {
            requeue(ctx, entry, *run_id).await;
        }
    }
    let why = format!("{dep} is unavailable ({e:#}); the run stays queued");
    Ok(pending
        .iter()
        .map(|_| Outcome::Deferred(why.clone()))
        .collect())
}

/// Handles one delivered entry alone. `reservation` is the permit reserved before claiming it;
/// entries re-read after a restart come without one and acquire directly.
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
            let held: &[Uuid] = if holds_permit { &[run_id] } else { &[] };
            let mut deferred = settle_error(ctx, e, &[(entry, run_id)], held).await?;
            Ok(deferred.remove(0))
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

/// The hand-off of one entry: errors before the launch leave the run queued (see
/// [`handle_entry`]).
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
            return Ok(not_queued(run_id, other));
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
    let grant = ctx.permits.acquire(run_id, wall, reservation).await?;
    if let Some(outcome) = contend(ctx, entry, run_id, wall, reservation, grant).await? {
        return Ok(outcome);
    }
    *holds_permit = true;
    crash_point(ctx, "after_permit");

    let mut acks = Vec::new();
    let outcome = launch(ctx, &[Ready { entry, run }], &mut acks)
        .await?
        .remove(0);
    crash_point(ctx, "before_ack");
    // Unacknowledged, the entry would be claimed later and skipped (the run has moved on).
    if let Err(e) = ctx.queue.ack_all(&acks).await {
        tracing::warn!(%run_id, error = %e, "cannot ack a handed-off entry; it will be skipped");
    }
    Ok(outcome)
}

/// Settles a grant that is not [`Grant::Granted`]: `None` when this worker holds the run's
/// permit now (granted, or taken over from a dead holder), else what became of the entry.
async fn contend(
    ctx: &Context,
    entry: &Entry,
    run_id: Uuid,
    wall: u32,
    reservation: Option<&Reservation>,
    grant: Grant,
) -> anyhow::Result<Option<Outcome>> {
    let holder = match grant {
        Grant::Granted => return Ok(None),
        Grant::Full => {
            return Ok(Some(Outcome::Deferred(
                "no capacity left for the run".into(),
            )));
        }
        Grant::HeldBy(holder) => holder,
    };
    if ctx.liveness.is_alive(&holder).await? {
        // Another live worker holds this run: it may be mid hand-off, or this entry is a
        // duplicate. Leave the entry pending; once the run has moved on it is skipped.
        return Ok(Some(Outcome::Deferred(format!(
            "run {run_id} is held by {holder}"
        ))));
    }
    match ctx
        .permits
        .take_over(run_id, wall, Some(&holder), reservation)
        .await?
    {
        Grant::Granted => {
            tracing::info!(%run_id, dead = %holder, "took over the permit of a dead worker");
            Ok(None)
        }
        _ => {
            ctx.queue.ack(&entry.id).await?;
            Ok(Some(Outcome::Skipped(format!(
                "run {run_id} was taken by another worker"
            ))))
        }
    }
}

/// Launches runs whose permits this worker holds: creates their executions in parallel,
/// records `dispatched` for all in one statement, starts them; the entries to acknowledge go
/// to `acks`. One outcome per run, in order.
///
/// An error (recording `dispatched` failed for good) comes before any execution started, and
/// every execution prepared is discarded: the runs are still queued. Once `dispatched` is
/// recorded nothing is undone: what fails afterwards leaves an entry pending at worst.
async fn launch(
    ctx: &Context,
    ready: &[Ready<'_>],
    acks: &mut Vec<String>,
) -> anyhow::Result<Vec<Outcome>> {
    let kind = ctx.executor.kind();
    let preparing = Instant::now();
    // The crash tests' "after some launches": half of the batch's executions exist.
    let created = AtomicUsize::new(0);
    let some = ready.len().div_ceil(2);
    let prepared = futures::future::join_all(ready.iter().map(|r| {
        let created = &created;
        async move {
            let prepared = ctx.executor.prepare(&r.run).await;
            if prepared.is_ok()
                && ready.len() > 1
                && created.fetch_add(1, Ordering::SeqCst) + 1 == some
            {
                crash_point(ctx, "amid_launches");
            }
            prepared
        }
    }))
    .await;
    let prepared_in = preparing.elapsed();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; ready.len()];
    let mut good: Vec<(usize, Box<dyn Prepared>)> = Vec::new();
    let mut failed = Vec::new();
    for (i, prepared) in prepared.into_iter().enumerate() {
        match prepared {
            Ok(prepared) => good.push((i, prepared)),
            Err(e) => failed.push((i, e)),
        }
    }

    if !good.is_empty() {
        let change = Change {
            worker: Some(ctx.name.clone()),
            executor: Some(kind.as_str().to_owned()),
            ..Change::by(format!("worker:{}", ctx.name)).detail(format!("launched by {}", ctx.name))
        };
        let ids: Vec<Uuid> = good.iter().map(|(i, _)| ready[*i].run.id).collect();
        // The executions exist now: from here on a transient failure is waited out, not undone
        // (the transition is idempotent, so a retry after a lost answer finds it done).
        crash_point(ctx, "before_dispatched");
        let (change, ids_ref) = (&change, &ids);
        let moved = ctx
            .resilience
            .retry("record dispatched", || async move {
                Ok(runs::transition_many(&ctx.db, ids_ref, RunStatus::Dispatched, change).await?)
            })
            .await;
        let moved: HashSet<Uuid> = match moved {
            Ok(moved) => moved.into_iter().collect(),
            Err(e) => {
                futures::future::join_all(good.into_iter().map(|(_, p)| p.discard())).await;
                return Err(e);
            }
        };
        // Runs that did not move: canceled meanwhile (stop wins: they never run), or moved on
        // already (a launch before a crash).
        let unmoved: Vec<Uuid> = ids
            .iter()
            .filter(|id| !moved.contains(id))
            .copied()
            .collect();
        let now: Option<HashMap<Uuid, RunStatus>> = if unmoved.is_empty() {
            Some(HashMap::new())
        } else {
            let unmoved = &unmoved;
            ctx.resilience
                .retry("read the runs", || async move {
                    Ok(runs::get_many(&ctx.db, unmoved).await?)
                })
                .await
                .map(|runs| runs.into_iter().map(|r| (r.id, r.status)).collect())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot read runs that did not move"))
                .ok()
        };
        crash_point(ctx, "after_launch");
        let (mut starts, mut discards, mut canceled) = (Vec::new(), Vec::new(), Vec::new());
        for (i, prepared) in good {
            let run_id = ready[i].run.id;
            let status = match &now {
                _ if moved.contains(&run_id) => Some(RunStatus::Dispatched),
                Some(now) => Some(now.get(&run_id).copied().unwrap_or(RunStatus::Canceled)),
                None => None,
            };
            match status {
                Some(RunStatus::Canceled) => {
                    discards.push(prepared);
                    canceled.push(i);
                }
                Some(_) => starts.push((i, prepared)),
                None => {
                    // Unknown: not started; the entry stays pending and is looked at again.
                    discards.push(prepared);
                    outcomes[i] = Some(Outcome::Deferred(format!(
                        "cannot tell whether run {run_id} was canceled"
                    )));
                }
            }
        }
        let recorded_in = preparing.elapsed() - prepared_in;
        let started: Vec<usize> = starts.iter().map(|(i, _)| *i).collect();
        futures::future::join_all(starts.into_iter().map(|(_, p)| p.start())).await;
        tracing::debug!(
            runs = ready.len(),
            prepare_us = prepared_in.as_micros() as u64,
            dispatched_us = recorded_in.as_micros() as u64,
            start_us = (preparing.elapsed() - prepared_in - recorded_in).as_micros() as u64,
            "batch launched"
        );
        for i in started {
            let r = &ready[i];
            let waited = (chrono::Utc::now() - r.run.queued_at).to_std().ok();
            metrics::launched(kind, preparing.elapsed(), waited);
            acks.push(r.entry.id.clone());
            outcomes[i] = Some(Outcome::Launched(r.run.id));
        }
        futures::future::join_all(discards.into_iter().map(|p| p.discard())).await;
        if !canceled.is_empty() {
            let runs: Vec<Uuid> = canceled.iter().map(|i| ready[*i].run.id).collect();
            match ctx.permits.release_many(&runs).await {
                Ok(()) => {
                    for i in canceled {
                        acks.push(ready[i].entry.id.clone());
                        outcomes[i] = Some(Outcome::Skipped(format!(
                            "run {} was canceled before it started",
                            ready[i].run.id
                        )));
                    }
                }
                Err(e) => {
                    // The entries stay pending: claimed again, they are skipped.
                    tracing::debug!(error = %e, "cannot give the permits of canceled runs back");
                    for i in canceled {
                        outcomes[i] = Some(Outcome::Deferred(format!(
                            "run {} was canceled; its permit could not be given back yet",
                            ready[i].run.id
                        )));
                    }
                }
            }
        }
    }

    // Not launched: each failure is settled alone (they are rare).
    for (i, error) in failed {
        let (entry, run_id) = (ready[i].entry, ready[i].run.id);
        let settled = not_launched(ctx, entry, run_id, error, acks).await;
        outcomes[i] = Some(match settled {
            Ok(outcome) => outcome,
            Err(e) => settle_error(ctx, e, &[(entry, run_id)], &[run_id])
                .await
                .map(|mut o| o.remove(0))
                .unwrap_or_else(|e| Outcome::Deferred(format!("{e:#}"))),
        });
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// A run whose execution could not be created: retried later, or failed for good.
async fn not_launched(
    ctx: &Context,
    entry: &Entry,
    run_id: Uuid,
    error: LaunchError,
    acks: &mut Vec<String>,
) -> anyhow::Result<Outcome> {
    let kind = ctx.executor.kind();
    match error {
        LaunchError::Retryable(why) => {
            // Not launched: the permit goes back and the entry is re-added, so a busy or
            // briefly unreachable executor never counts towards dead-lettering.
            metrics::executor_error(kind, "launch_retryable");
            ctx.permits.release(run_id).await?;
            requeue(ctx, entry, run_id).await;
            Ok(Outcome::Deferred(why))
        }
        LaunchError::Permanent(why) => {
            metrics::executor_error(kind, "launch_permanent");
            let change = Change::by(format!("worker:{}", ctx.name))
                .detail(&why)
                .reason(Reason::LaunchFailed);
            if runs::transition(&ctx.db, run_id, RunStatus::Failed, &change).await? {
                metrics::run_ended(RunStatus::Failed, Some(Reason::LaunchFailed));
            }
            ctx.permits.release(run_id).await?;
            acks.push(entry.id.clone());
            Ok(Outcome::Failed(run_id))
        }
    }
}
