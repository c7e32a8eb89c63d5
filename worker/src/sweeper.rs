//! The sweeper: every `retention.sweep_seconds`, removes the objects of deleted runs, applies
//! the retention, deletes snapshots nothing uses, aborts abandoned dataset uploads, removes
//! deleted datasets' objects and deletes old status-callback events (the work itself is in
//! [`coderun_shared::sweep`]). Every worker sweeps; rows are claimed with `SKIP LOCKED`, so the
//! fleet shares the work and a worker that dies mid-sweep leaves it to the next round.

use std::time::Duration;

use coderun_shared::sweep::{self, Swept};
use tokio_util::sync::CancellationToken;

use crate::context::Context;

/// One round of every sweep.
pub async fn sweep_once(ctx: &Context) -> anyhow::Result<Swept> {
    let mut swept = sweep::sweep_all(&ctx.db, &ctx.storage, &ctx.settings.retention).await?;
    swept.datasets = coderun_shared::datasets::sweep(
        &ctx.db,
        &ctx.storage,
        Duration::from_secs(ctx.settings.datasets.upload_max_age_seconds),
    )
    .await?;
    swept.webhook_events =
        coderun_shared::webhooks::prune(&ctx.db, ctx.settings.webhooks.keep_days, 1000).await?;
    Ok(swept)
}

/// Sweeps every `retention.sweep_seconds` until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let period = Duration::from_secs(ctx.settings.retention.sweep_seconds.max(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        match sweep_once(&ctx).await {
            Ok(swept) if swept != Swept::default() => tracing::info!(?swept, "swept storage"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeping storage failed; retrying next round"),
        }
    }
}
