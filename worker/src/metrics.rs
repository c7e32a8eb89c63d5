//! The worker's Prometheus metrics: every name is defined here, each with the one function
//! that records it, so `/metrics`, the Grafana dashboard (`infra/grafana/`) and the README
//! agree on what exists.
//!
//! Counters and the launch histograms are recorded where things happen; the fleet-wide gauges
//! (stream lag and pending entries, permits held and the capacity) are read from Redis when
//! `/metrics` is scraped, so they are never stale and cost nothing between scrapes.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use coderun_shared::config::ExecutorKind;
use coderun_shared::runs::{Reason, RunStatus};
use fred::prelude::*;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::context::Context;

/// Entries of the runs stream no consumer has read yet (the group's `lag`).
pub const STREAM_LAG: &str = "worker_stream_lag";
/// Entries delivered to a consumer and not yet acknowledged.
pub const STREAM_PENDING: &str = "worker_stream_pending";
/// Capacity permits held in the whole fleet (runs and reservations).
pub const PERMITS_HELD: &str = "worker_permits_held";
/// The fleet's capacity in force.
pub const PERMITS_CAPACITY: &str = "worker_permits_capacity";
/// Executions this worker runs or watches now.
pub const EXECUTIONS_LIVE: &str = "worker_executions_live";
/// Runs this worker launched, by executor.
pub const LAUNCHES: &str = "worker_launches_total";
/// How long the executor took to make a run's execution exist, by executor.
pub const LAUNCH_DURATION: &str = "worker_launch_duration_seconds";
/// From the run's submission to its launch: what a user waits before anything happens.
pub const START_DELAY: &str = "worker_start_delay_seconds";
/// Runs this worker ended, by status and reason (`none` when the run gave none).
pub const RUNS_ENDED: &str = "worker_runs_ended_total";
/// Stream entries the janitor claimed from dead or stuck consumers.
pub const JANITOR_CLAIMS: &str = "worker_janitor_claims_total";
/// Repairs of the reconciler, by kind (`requeued`, `reattempted`, `lost`, `released`).
pub const RECONCILER_REPAIRS: &str = "worker_reconciler_repairs_total";
/// Stream entries moved to the dead-letter stream.
pub const DEAD_LETTERS: &str = "worker_dead_letters_total";
/// Executor failures, by executor and kind (`launch_retryable`, `launch_permanent`, `stop`).
pub const EXECUTOR_ERRORS: &str = "worker_executor_errors_total";

/// Status callback attempts this worker made, by outcome (`delivered`, `retryable`, `refused`,
/// `blocked`).
pub const WEBHOOK_ATTEMPTS: &str = "worker_webhook_attempts_total";

/// The process-wide recorder, installed on first use. Another recorder may be installed
/// already (an embedding process, a test running the API beside workers): then this one renders
/// nothing, which is still a valid exposition, and the worker's series appear in that one.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(LAUNCH_DURATION.into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(START_DELAY.into()),
                        &[
                            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                        ],
                    )
                })
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Describes every series and shows each counter at zero from the start, so a dashboard sees
/// "none yet" rather than "no data" (an absent series is not a zero).
pub fn register(executor: ExecutorKind) {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        STREAM_LAG,
        "Entries of the runs stream no consumer has read yet"
    );
    describe_gauge!(STREAM_PENDING, "Entries delivered and not yet acknowledged");
    describe_gauge!(PERMITS_HELD, "Capacity permits held in the fleet");
    describe_gauge!(PERMITS_CAPACITY, "The fleet's capacity in force");
    describe_gauge!(EXECUTIONS_LIVE, "Executions this worker runs or watches");
    describe_counter!(LAUNCHES, "Runs this worker launched");
    describe_histogram!(
        LAUNCH_DURATION,
        Unit::Seconds,
        "Time to create a run's execution"
    );
    describe_histogram!(START_DELAY, Unit::Seconds, "Time from submission to launch");
    describe_counter!(RUNS_ENDED, "Runs ended, by status and reason");
    describe_counter!(
        JANITOR_CLAIMS,
        "Stream entries claimed from dead or stuck consumers"
    );
    describe_counter!(
        RECONCILER_REPAIRS,
        "Repairs made by the reconciler, by kind"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Stream entries moved to the dead-letter stream"
    );
    describe_counter!(EXECUTOR_ERRORS, "Executor failures, by kind");
    describe_counter!(WEBHOOK_ATTEMPTS, "Status callback attempts, by outcome");
    let executor = executor.as_str();
    metrics::counter!(LAUNCHES, "executor" => executor).increment(0);
    metrics::counter!(JANITOR_CLAIMS).increment(0);
    metrics::counter!(DEAD_LETTERS).increment(0);
    for kind in ["requeued", "reattempted", "lost", "released"] {
        metrics::counter!(RECONCILER_REPAIRS, "kind" => kind).increment(0);
    }
    for kind in ["launch_retryable", "launch_permanent", "stop"] {
        metrics::counter!(EXECUTOR_ERRORS, "executor" => executor, "kind" => kind).increment(0);
    }
}

/// A run's execution was made to exist in `took`, `waited` after its submission.
pub fn launched(executor: ExecutorKind, took: Duration, waited: Option<Duration>) {
    let executor = executor.as_str();
    metrics::counter!(LAUNCHES, "executor" => executor).increment(1);
    metrics::histogram!(LAUNCH_DURATION, "executor" => executor).record(took.as_secs_f64());
    if let Some(waited) = waited {
        metrics::histogram!(START_DELAY, "executor" => executor).record(waited.as_secs_f64());
    }
}

/// A run ended `status` for `reason`.
pub fn run_ended(status: RunStatus, reason: Option<Reason>) {
    metrics::counter!(
        RUNS_ENDED,
        "status" => status.as_str(),
        "reason" => reason.map_or("none", Reason::as_str)
    )
    .increment(1);
}

/// The janitor claimed `count` entries.
pub fn janitor_claimed(count: usize) {
    metrics::counter!(JANITOR_CLAIMS).increment(count as u64);
}

/// The reconciler made `count` repairs of `kind`.
pub fn repaired(kind: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!(RECONCILER_REPAIRS, "kind" => kind).increment(count as u64);
    }
}

/// An entry went to the dead-letter stream.
/// A status callback attempt ended so.
pub fn webhook_attempt(outcome: &coderun_shared::webhooks::Outcome) {
    use coderun_shared::webhooks::Outcome;
    let kind = match outcome {
        Outcome::Delivered { .. } => "delivered",
        Outcome::Retryable { .. } => "retryable",
        Outcome::Refused { .. } => "refused",
        Outcome::Blocked { .. } => "blocked",
    };
    metrics::counter!(WEBHOOK_ATTEMPTS, "outcome" => kind).increment(1);
}

pub fn dead_lettered() {
    metrics::counter!(DEAD_LETTERS).increment(1);
}

/// The executor failed at `kind`.
pub fn executor_error(executor: ExecutorKind, kind: &'static str) {
    metrics::counter!(EXECUTOR_ERRORS, "executor" => executor.as_str(), "kind" => kind)
        .increment(1);
}

/// Reads the fleet-wide gauges from Redis (at scrape time). A gauge that cannot be read keeps
/// its last value; the failure is logged, and the scrape still answers.
pub async fn sample(ctx: &Context) {
    metrics::gauge!(EXECUTIONS_LIVE).set(ctx.executor.live().len() as f64);
    match ctx.permits.in_use().await {
        Ok(held) => metrics::gauge!(PERMITS_HELD).set(f64::from(held)),
        Err(e) => tracing::debug!(error = %e, "cannot read the permits in use"),
    }
    match ctx.permits.capacity().await {
        Ok(capacity) => metrics::gauge!(PERMITS_CAPACITY).set(f64::from(capacity)),
        Err(e) => tracing::debug!(error = %e, "cannot read the capacity"),
    }
    match group_backlog(ctx).await {
        Ok((lag, pending)) => {
            if let Some(lag) = lag {
                metrics::gauge!(STREAM_LAG).set(lag as f64);
            }
            metrics::gauge!(STREAM_PENDING).set(pending as f64);
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the consumer group's backlog"),
    }
}

/// `(lag, pending)` of the workers' consumer group (`XINFO GROUPS`). Redis may not know the
/// lag (after deletions in the stream): `None` then.
async fn group_backlog(ctx: &Context) -> anyhow::Result<(Option<u64>, u64)> {
    let groups: Vec<HashMap<String, Value>> = ctx.redis.xinfo_groups(ctx.keys.stream()).await?;
    let group = groups.into_iter().find(|g| {
        g.get("name").and_then(Value::as_string).as_deref() == Some(&ctx.settings.queue.group)
    });
    let Some(group) = group else {
        return Ok((Some(0), 0));
    };
    let number = |key: &str| group.get(key).and_then(Value::as_u64);
    Ok((number("lag"), number("pending").unwrap_or(0)))
}
