//! The janitor: claims entries left pending on dead (or stuck) consumers with XAUTOCLAIM and
//! hands them off like fresh ones — holding a permit before each claim, as the consumer does
//! before each read. Entries delivered too often are dead-lettered by the hand-off itself.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::consumer::{Outcome, handle_entry};
use crate::context::Context;

/// Claims and handles idle entries while capacity allows; returns what it did.
pub async fn claim_idle(ctx: &Context) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    // While a dependency is down, claiming would only add deliveries to entries.
    if !ctx.resilience.open().is_empty() {
        return Ok(outcomes);
    }
    for _ in 0..64 {
        let Some(reservation) = ctx.permits.reserve().await? else {
            break;
        };
        let claimed = ctx.queue.claim_idle(&ctx.name, 1).await;
        let outcome = match claimed {
            Ok(entries) => match entries.first() {
                Some(entry) => {
                    crate::metrics::janitor_claimed(1);
                    Some(handle_entry(ctx, entry, Some(&reservation)).await)
                }
                None => None,
            },
            Err(e) => Some(Err(e.into())),
        };
        ctx.permits.cancel(reservation).await;
        match outcome {
            Some(outcome) => outcomes.push(outcome?),
            None => break,
        }
    }
    Ok(outcomes)
}

/// Re-handles the entries delivered to this consumer before a restart (its own pending list).
pub async fn recover_own(ctx: &Context) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for entry in ctx.queue.read_own_pending(&ctx.name).await? {
        outcomes.push(handle_entry(ctx, &entry, None).await?);
    }
    Ok(outcomes)
}

/// Claims every `janitor_seconds` until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let period = Duration::from_secs(ctx.settings.worker.janitor_seconds.max(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        match claim_idle(&ctx).await {
            Ok(outcomes) if !outcomes.is_empty() => {
                tracing::info!(?outcomes, "claimed idle entries")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "claiming idle entries failed"),
        }
    }
}
