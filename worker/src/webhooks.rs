//! Status callbacks, sent by the fleet. Two loops per worker:
//!
//! - the relay moves due deliveries from Postgres onto the `{prefix}:webhooks` stream — woken
//!   by `webhook_emit`'s NOTIFY when a change commits, and every `poll_ms` for retries that
//!   became due and for entries lost on the way (Postgres is the truth; the stream a hint);
//! - the sender reads the stream through the `webhooks` consumer group and makes one attempt
//!   per entry: a POST signed per Standard Webhooks, within `timeout_ms`, following no
//!   redirect, reading at most `max_response_bytes` of the answer, and connecting only to
//!   addresses the policy allows — checked on every address a name resolves to, at connection
//!   time, so a name cannot be rebound to a private address after a check. The attempt is
//!   recorded (and the retry scheduled) before its entry is acknowledged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use coderun_shared::config::WebhookSettings;
use coderun_shared::redis;
use coderun_shared::webhooks::{self, AddressPolicy, Outcome, Outgoing, Sealer, WebhookQueue};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::Context;

/// Deliveries the relay moves onto the stream per statement.
const RELAY_BATCH: i64 = 500;

/// A resolved address the policy refuses; recognised in the error chain of a failed request.
#[derive(Debug)]
struct Blocked(String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Blocked {}

/// Resolves names with the system resolver and keeps only the addresses the policy allows: the
/// connection can only go to an address that was checked.
struct GuardedResolver {
    policy: AddressPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(found) => found.collect(),
                Err(e) => return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            };
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(Box::new(Blocked(format!(
                    "{host} resolves to {} only: loopback, private or reserved addresses are \
                     not allowed",
                    shown.join(", ")
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Sends attempts: the HTTP client and the rules it keeps.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: AddressPolicy,
    settings: WebhookSettings,
    /// Opens the endpoints' stored signing keys.
    sealer: Arc<Sealer>,
}

impl Sender {
    pub fn new(settings: &WebhookSettings) -> anyhow::Result<Self> {
        let policy = AddressPolicy::from_settings(settings);
        let mut builder = reqwest::Client::builder();
        if !settings.extra_roots_file.is_empty() {
            let pem = std::fs::read(&settings.extra_roots_file).with_context(|| {
                format!(
                    "read webhooks.extra_roots_file {}",
                    settings.extra_roots_file
                )
            })?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!(
                    "webhooks.extra_roots_file {} is not PEM",
                    settings.extra_roots_file
                )
            })?;
            // A file of anything but certificates parses as none: callbacks would then fail
            // their handshakes one by one instead of the worker saying why at start.
            anyhow::ensure!(
                !roots.is_empty(),
                "webhooks.extra_roots_file {} holds no PEM certificate",
                settings.extra_roots_file
            );
            builder = builder.tls_certs_merge(roots);
        }
        let client = builder
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf to addresses we never checked.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { policy }))
            .user_agent(concat!("coderun-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            policy,
            settings: settings.clone(),
            sealer: Arc::new(Sealer::from_settings(settings)),
        })
    }

    /// One attempt at `out`: how it went.
    pub async fn attempt(&self, out: &Outgoing) -> Outcome {
        let url = match reqwest::Url::parse(&out.url) {
            Ok(url) => url,
            Err(e) => return blocked(format!("the URL no longer parses: {e}")),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return blocked(format!("{} URLs are not callbacks", url.scheme()));
        }
        // A host written as an address is never resolved, so the resolver cannot check it.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.policy.allows(ip)
        {
            return blocked(format!(
                "{ip} is a loopback, private or reserved address, which callbacks may not reach"
            ));
        }
        let timestamp = Utc::now().timestamp();
        let signature = webhooks::sign(&out.secret, &out.message_id, timestamp, &out.body);
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &out.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(out.body.clone())
            .send()
            .await;
        match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                // Read (and drop) at most the cap, so the connection may be reused without
                // letting an endpoint stream into this process.
                let mut read = 0usize;
                while read < self.settings.max_response_bytes {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                Outcome::of_status(status)
            }
            Err(e) => {
                if let Some(blocked_by) = find::<Blocked>(&e) {
                    return blocked(blocked_by.0.clone());
                }
                let error = if e.is_timeout() {
                    format!("no answer within {} ms", self.settings.timeout_ms)
                } else {
                    chain(&e)
                };
                Outcome::Retryable {
                    status: None,
                    error: Some(error),
                }
            }
        }
    }
}

/// A refused destination: final, since another attempt would go to the same place.
fn blocked(error: String) -> Outcome {
    Outcome::Blocked { error }
}

fn find<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// An error with its causes, `a: b: c`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut current = e.source();
    while let Some(err) = current {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = err.source();
    }
    text
}

/// Attempts the delivery named by a stream entry, if it is still due: sends, then records.
/// Returns the outcome, `None` when there was nothing to send.
pub async fn deliver(
    ctx: &Context,
    sender: &Sender,
    delivery: Uuid,
) -> anyhow::Result<Option<Outcome>> {
    let Some(out) = webhooks::outgoing(&ctx.db, delivery, &sender.sealer).await? else {
        return Ok(None);
    };
    let at = Utc::now();
    let started = Instant::now();
    let outcome = sender.attempt(&out).await;
    let took = started.elapsed();
    let next =
        webhooks::record_attempt(&ctx.db, &out, at, took, &outcome, &ctx.settings.webhooks).await?;
    crate::metrics::webhook_attempt(&outcome);
    tracing::debug!(%delivery, ?outcome, ?next, "webhook attempt");
    Ok(Some(outcome))
}

/// One relay pass: moves every due delivery onto the stream, and clears entries left pending
/// on a consumer that died (their deliveries come back through Postgres). Returns how many
/// deliveries it enqueued.
pub async fn relay_once(ctx: &Context, queue: &WebhookQueue) -> anyhow::Result<usize> {
    let settings = &ctx.settings.webhooks;
    let requeue_after = Duration::from_secs(settings.requeue_after_seconds);
    let mut enqueued = 0;
    loop {
        let due = webhooks::enqueue_due(&ctx.db, requeue_after, RELAY_BATCH).await?;
        for delivery in &due {
            queue.enqueue(*delivery).await?;
        }
        enqueued += due.len();
        if (due.len() as i64) < RELAY_BATCH {
            break;
        }
    }
    queue.clear_idle(&ctx.name, requeue_after, 100).await?;
    Ok(enqueued)
}

/// The relay until `shutdown`: a pass on every notification, and every `poll_ms`.
async fn relay(ctx: Context, queue: WebhookQueue, shutdown: CancellationToken) {
    let period = Duration::from_millis(ctx.settings.webhooks.poll_ms);
    let mut listener = None;
    loop {
        if listener.is_none() {
            match PgListener::connect_with(&ctx.db).await {
                Ok(mut l) => match l.listen(webhooks::NOTIFY_CHANNEL).await {
                    Ok(()) => listener = Some(l),
                    Err(e) => tracing::warn!(error = %e, "cannot listen for webhook deliveries"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot listen for webhook deliveries"),
            }
        }
        if let Err(e) = relay_once(&ctx, &queue).await {
            tracing::warn!(error = %e, "relaying webhook deliveries failed; retrying shortly");
        }
        let woken = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        let failed = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => None,
            woken = woken => woken.err(),
        };
        if let Some(e) = failed {
            tracing::warn!(error = %e, "the webhook notification listener failed");
            listener = None;
        }
    }
}

/// The sender until `shutdown`: reads entries on a Redis connection of its own, only as many
/// as it has free slots (`concurrency`), so a slow endpoint holds one slot and never a batch;
/// acknowledges each entry once its attempt is recorded (an entry whose recording failed stays
/// pending, and its delivery comes back through the relay). On shutdown it waits for the
/// attempts in flight.
async fn send(ctx: Context, queue: WebhookQueue, sender: Sender, shutdown: CancellationToken) {
    let reader = loop {
        match redis::connect(&ctx.settings.redis).await {
            Ok(reader) => break reader,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect the webhook reader; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(
        ctx.settings.webhooks.concurrency,
    ));
    let block_ms = ctx.settings.queue.block_ms;
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        // At least one free slot before reading, then as many entries as slots are free.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let free = 1 + slots.available_permits() as u64;
        let entries = tokio::select! {
            _ = shutdown.cancelled() => break,
            read = queue.read(&reader, &ctx.name, free, block_ms) => read,
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "reading the webhooks stream failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut first = Some(first);
        for (entry, delivery) in entries {
            let slot = match first.take() {
                Some(slot) => slot,
                None => slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed"),
            };
            let (ctx, queue, sender) = (ctx.clone(), queue.clone(), sender.clone());
            in_flight.spawn(async move {
                let _slot = slot;
                let done = match delivery {
                    Some(delivery) => deliver(&ctx, &sender, delivery).await.map(|_| ()),
                    None => Ok(()),
                };
                match done {
                    Ok(()) => {
                        if let Err(e) = queue.ack(&entry).await {
                            tracing::warn!(error = %e, %entry, "cannot acknowledge a webhook entry");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, ?delivery, "a webhook attempt was not recorded")
                    }
                }
            });
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Starts the relay and the sender; both end when `shutdown` is cancelled.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let settings = &ctx.settings.webhooks;
    let queue = WebhookQueue::new(
        ctx.redis.clone(),
        &ctx.keys,
        &settings.group,
        ctx.settings.queue.trim_after_hours,
    );
    let sender = match Sender::new(settings) {
        Ok(sender) => sender,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; no callbacks are sent");
            return;
        }
    };
    while let Err(e) = queue.ensure_group().await {
        tracing::warn!(error = %e, "cannot create the webhooks consumer group; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tokio::join!(
        relay(ctx.clone(), queue.clone(), shutdown.clone()),
        send(ctx.clone(), queue, sender, shutdown),
    );
}
