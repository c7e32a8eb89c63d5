//! Liveness: each worker keeps a heartbeat key with a short TTL and renews the permits of the
//! executions it runs — re-creating any a restarted Redis lost, so the permits are rebuilt from
//! the runs really executing. A worker whose key expired is dead; its runs are reconciled and its
//! permits may be taken over.

use std::time::Duration;

use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::context::Context;

/// Is `worker`'s heartbeat fresh?
pub async fn is_alive(ctx: &Context, worker: &str) -> anyhow::Result<bool> {
    let exists: u64 = ctx.redis.exists(ctx.keys.heartbeat(worker)).await?;
    Ok(exists > 0)
}

/// One beat: refresh the heartbeat and renew the permit of every live execution.
pub async fn beat(ctx: &Context) -> anyhow::Result<()> {
    // A Redis that restarted may have lost the last second of writes, permits among them:
    // this beat re-creates ours, and no worker takes new work until all have beaten.
    let info: String = ctx.redis.info(Some(fred::types::InfoKind::Server)).await?;
    if let Some(run_id) = info.lines().find_map(|l| l.trim().strip_prefix("run_id:"))
        && ctx.resilience.redis_restarted(run_id)
    {
        tracing::warn!("Redis restarted: renewing permits before taking new work");
        crate::consumer::settle_permits(ctx);
    }
    let ttl = ctx.settings.worker.heartbeat_ttl_seconds as i64;
    let _: () = ctx
        .redis
        .set(
            ctx.keys.heartbeat(&ctx.name),
            chrono::Utc::now().to_rfc3339(),
            Some(Expiration::EX(ttl)),
            None,
            false,
        )
        .await?;
    for run in ctx.executor.live() {
        // The longest spec bounds the TTL; the exact wall time is not needed to renew.
        let ttl = ctx.lease_ttl_ms(
            ctx.settings
                .specs
                .values()
                .map(|s| s.wall_seconds)
                .max()
                .unwrap_or(0),
        );
        ctx.semaphore
            .renew(&run.to_string(), &ctx.name, ttl)
            .await?;
    }
    Ok(())
}

/// Beats every `heartbeat_seconds` until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let period = Duration::from_secs(ctx.settings.worker.heartbeat_seconds.max(1));
    loop {
        if let Err(e) = beat(&ctx).await {
            if let Some(dep) = crate::resilience::classify(&e) {
                ctx.resilience.failure(dep, &e);
            }
            tracing::warn!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// Removes the heartbeat at a clean exit, so the fleet learns at once that this worker is gone.
pub async fn retire(ctx: &Context) {
    let _: Result<(), _> = ctx.redis.del(ctx.keys.heartbeat(&ctx.name)).await;
}
