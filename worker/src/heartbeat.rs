//! Liveness: each worker keeps a heartbeat key with a short TTL and renews the permits of the
//! executions it runs — re-creating any a restarted Redis lost, so the permits are rebuilt from
//! the runs really executing. A worker whose key expired is dead: its runs are reconciled and
//! its permits may be taken over. [`Liveness`] is the one place that tells a live worker from a
//! dead one.

use std::collections::HashSet;
use std::time::Duration;

use coderun_shared::redis::Keys;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::context::Context;

/// Reads and writes the fleet's heartbeats.
#[derive(Clone)]
pub struct Liveness {
    redis: Client,
    keys: Keys,
}

impl Liveness {
    pub fn new(redis: Client, keys: Keys) -> Self {
        Self { redis, keys }
    }

    /// Is `worker`'s heartbeat fresh?
    pub async fn is_alive(&self, worker: &str) -> Result<bool, Error> {
        let exists: u64 = self.redis.exists(self.keys.heartbeat(worker)).await?;
        Ok(exists > 0)
    }

    /// Those of `workers` whose heartbeat is fresh.
    pub async fn alive_among<'a>(
        &self,
        workers: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashSet<String>, Error> {
        let mut alive = HashSet::new();
        for worker in workers.into_iter().collect::<HashSet<_>>() {
            if self.is_alive(worker).await? {
                alive.insert(worker.to_owned());
            }
        }
        Ok(alive)
    }

    /// Marks `worker` alive for `ttl_seconds`.
    async fn beat(&self, worker: &str, ttl_seconds: u64) -> Result<(), Error> {
        self.redis
            .set(
                self.keys.heartbeat(worker),
                chrono::Utc::now().to_rfc3339(),
                Some(Expiration::EX(ttl_seconds as i64)),
                None,
                false,
            )
            .await
    }

    /// Marks `worker` gone at once.
    async fn retire(&self, worker: &str) -> Result<(), Error> {
        self.redis.del(self.keys.heartbeat(worker)).await
    }
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
    ctx.liveness
        .beat(&ctx.name, ctx.settings.worker.heartbeat_ttl_seconds)
        .await?;
    ctx.permits.renew_many(&ctx.executor.live()).await?;
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
    let _ = ctx.liveness.retire(&ctx.name).await;
}
