//! Stop requests reach the execution whichever worker runs it: every worker listens on the
//! stops channel, and a periodic sweep of `stopping` runs catches any message lost on the way.

use std::time::Duration;

use coderun_shared::runs;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::Context;

/// Stops every execution of this worker whose run is `stopping` in Postgres.
pub async fn sweep(ctx: &Context) -> anyhow::Result<usize> {
    let live = ctx.executor.live();
    if live.is_empty() {
        return Ok(0);
    }
    let stopping = runs::stopping_among(&ctx.db, &live).await?;
    for run in &stopping {
        ctx.executor.stop(*run).await;
    }
    Ok(stopping.len())
}

/// Listens for stop announcements until `shutdown`; sweeps every `janitor_seconds` as well.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let subscriber = match subscribe(&ctx).await {
        Ok(subscriber) => Some(subscriber),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to stop requests; relying on the sweep");
            None
        }
    };
    let mut messages = subscriber.as_ref().map(|s| s.message_rx());
    let period = Duration::from_secs(ctx.settings.worker.janitor_seconds.max(1));
    let mut sweep_at = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(sweep_at) => {
                if let Err(e) = sweep(&ctx).await {
                    tracing::warn!(error = %e, "stop sweep failed");
                }
                sweep_at = tokio::time::Instant::now() + period;
            }
            message = async {
                match messages.as_mut() {
                    Some(rx) => rx.recv().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                if let Some(run) = message.and_then(|m| m.value.as_string()).and_then(|v| v.parse::<Uuid>().ok()) {
                    ctx.executor.stop(run).await;
                }
            }
        }
    }
    if let Some(subscriber) = subscriber {
        let _ = subscriber.quit().await;
    }
}

/// A connection of its own in subscriber mode. A subscription lost in a reconnect only delays
/// stops until the next sweep.
async fn subscribe(ctx: &Context) -> anyhow::Result<Client> {
    let subscriber = coderun_shared::redis::connect(&ctx.settings.redis).await?;
    subscriber.subscribe(ctx.keys.stops()).await?;
    Ok(subscriber)
}
