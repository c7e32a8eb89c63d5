//! The coderun worker: a long-running consumer of the runs stream. Many replicas run at once and
//! any may die at any moment; Postgres is the truth, the stream a hint, and the Redis lease
//! semaphore the fleet's capacity.
//!
//! The flow: [`consumer`] (reserve permits → read a batch → prepare → `dispatched` → start → ack) hands
//! runs to an [`executor`]; the executor reports what its executions do to the [`supervisor`],
//! which writes through the [`recorder`] and ends runs as [`ending`] maps them; [`permits`] is
//! the whole life of a capacity permit; [`heartbeat`] keeps this worker and its permits alive
//! and tells live workers from dead ones; [`janitor`] claims entries idle on dead consumers;
//! [`reconciler`] repairs lost entries and lost executions; [`stops`] carries stop requests to
//! executions; [`resilience`] waits out outages of the dependencies (retries and circuit
//! breakers); [`sweeper`] removes deleted and expired runs' objects from the bucket;
//! [`webhooks`] relays status callbacks from Postgres to their stream and sends them;
//! [`metrics`] and [`http`] show all of it to an operator.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub mod cli;
pub mod consumer;
pub mod context;
pub mod ending;
pub mod executor;
pub mod heartbeat;
pub mod http;
pub mod janitor;
mod lines;
pub mod metrics;
pub mod permits;
pub mod reconciler;
pub mod recorder;
pub mod resilience;
pub mod sandbox;
mod stages;
pub mod stops;
pub mod supervisor;
pub mod sweeper;
pub mod webhooks;

pub use context::Context;

/// Runs the worker until `shutdown` resolves: then it stops reading, waits up to
/// `shutdown_grace_seconds` for executions in flight, and leaves whatever remains to the
/// fleet's reconcilers.
pub async fn run(ctx: Context, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // The recorder first, so the series registered next land in it.
    metrics::handle();
    metrics::register(ctx.executor.kind());
    ctx.queue.ensure_group().await?;
    heartbeat::beat(&ctx).await?;
    match janitor::recover_own(&ctx).await {
        Ok(outcomes) if !outcomes.is_empty() => {
            tracing::info!(?outcomes, "finished own pending entries")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot re-read own pending entries"),
    }
    tracing::info!(worker = %ctx.name, executor = %ctx.executor.kind(), "worker consuming");

    let stop_background = CancellationToken::new();
    let background = [
        tokio::spawn(heartbeat::run(ctx.clone(), stop_background.clone())),
        tokio::spawn(janitor::run(ctx.clone(), stop_background.clone())),
        tokio::spawn(reconciler::run(ctx.clone(), stop_background.clone())),
        tokio::spawn(stops::run(ctx.clone(), stop_background.clone())),
        tokio::spawn(http::serve(ctx.clone(), stop_background.clone())),
        tokio::spawn(sweeper::run(ctx.clone(), stop_background.clone())),
        tokio::spawn(webhooks::run(ctx.clone(), stop_background.clone())),
        tokio::spawn({
            let (executor, stop) = (ctx.executor.clone(), stop_background.clone());
            async move { executor.run(stop).await }
        }),
    ];

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            step = consumer::process_next(&ctx) => match step {
                Ok(consumer::Step::NoCapacity | consumer::Step::Paused(_)) => {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                Ok(consumer::Step::Idle) => {}
                Ok(consumer::Step::Handled(outcomes)) => {
                    tracing::debug!(?outcomes, "handled a batch of entries")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consuming failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    tracing::info!("shutting down: no more reads; waiting for runs in flight");
    ctx.executor
        .drain(Duration::from_secs(
            ctx.settings.worker.shutdown_grace_seconds,
        ))
        .await;
    stop_background.cancel();
    for task in background {
        let _ = task.await;
    }
    heartbeat::retire(&ctx).await;
    Ok(())
}
