//! Status callbacks: users' endpoints, the outbox of events, deliveries and their attempts, the
//! Standard Webhooks signature, the `{prefix}:webhooks` stream, and which addresses a callback
//! may reach.
//!
//! The rule it keeps: an event is written in the same transaction as the change it describes
//! (`webhook_emit` in SQL, called by a trigger on `runs` and by [`emit`]), and only then put on
//! the stream — Postgres is the truth, the stream a hint. A delivery whose entry was lost is
//! enqueued again by the relay ([`enqueue_due`]), so every event reaches every endpoint that
//! wanted it at least once; receivers deduplicate by `webhook-id` and order by `sequence`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use fred::prelude::*;
use fred::types::streams::{XCap, XCapKind, XCapTrim, XID};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::config::WebhookSettings;
use crate::domain::PageRequest;
use crate::redis::Keys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("you already have {max} callback endpoints, the most allowed; delete one first")]
    TooManyEndpoints { max: u32 },
    #[error("the endpoint is disabled ({0}); register it again to receive deliveries")]
    Disabled(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The events an endpoint may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A run changed status (every transition, its creation included).
    RunStatus,
    /// A pipeline run changed status.
    PipelineRunStatus,
    /// A pipeline run's stage waits for a teacher's approval.
    ApprovalRequested,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::RunStatus,
        EventType::PipelineRunStatus,
        EventType::ApprovalRequested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RunStatus => "run.status",
            EventType::PipelineRunStatus => "pipeline_run.status",
            EventType::ApprovalRequested => "approval.requested",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == raw)
    }
}

/// Where callbacks may go: public addresses, plus what the settings allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPolicy {
    pub allow_loopback: bool,
    pub allow_private: bool,
}

impl AddressPolicy {
    pub fn from_settings(settings: &WebhookSettings) -> Self {
        Self {
            allow_loopback: settings.allow_loopback,
            allow_private: settings.allow_private,
        }
    }

    /// May a callback connect to `ip`? Loopback only when allowed; private, link-local,
    /// shared (CGNAT), unspecified, broadcast, multicast, documentation and reserved ranges only
    /// when private ones are allowed. IPv4 addresses inside IPv6 (mapped, NAT64, 6to4) are
    /// judged as the IPv4 address they carry.
    pub fn allows(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.allows_v4(v4),
            IpAddr::V6(v6) => {
                if let Some(v4) = embedded_v4(v6) {
                    return self.allows_v4(v4);
                }
                if v6.is_loopback() {
                    return self.allow_loopback;
                }
                let first = v6.segments()[0];
                let special = v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                    || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                    || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                    || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                    || first == 0x0100; // discard-only 100::/64
                !special || self.allow_private
            }
        }
    }

    fn allows_v4(&self, ip: Ipv4Addr) -> bool {
        if ip.is_loopback() {
            return self.allow_loopback;
        }
        let [a, b, c, _] = ip.octets();
        let special = ip.is_private()
            || ip.is_link_local()
            || ip.is_unspecified()
            || ip.is_broadcast()
            || ip.is_multicast()
            || ip.is_documentation()
            || a == 0 // "this network"
            || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
            || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
            || (a == 198 && (18..20).contains(&b)) // benchmarking
            || a >= 240; // reserved
        !special || self.allow_private
    }
}

/// The IPv4 address an IPv6 address stands for, if it carries one a packet would reach.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated, but some stacks still route it); not :: or ::1.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // NAT64 64:ff9b::/96
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // 6to4 2002:a.b.c.d::/48
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// A checked endpoint URL: http or https, a host, no credentials, no fragment, within the
/// length cap; a host written as an IP address must be one the policy allows (a name is
/// checked by the worker on every connection, after resolving it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl(String);

impl EndpointUrl {
    pub fn parse(raw: &str, settings: &WebhookSettings) -> Result<Self, Error> {
        let invalid = |why: &str| Error::Invalid(format!("url: {why}"));
        if raw.len() > settings.max_url_bytes {
            return Err(invalid(&format!(
                "longer than {} bytes",
                settings.max_url_bytes
            )));
        }
        let url = url::Url::parse(raw).map_err(|e| invalid(&format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "must not carry credentials; the signature authenticates the callback",
            ));
        }
        if url.fragment().is_some() {
            return Err(invalid("must not have a #fragment"));
        }
        let ip = match url.host() {
            None => return Err(invalid("has no host")),
            Some(url::Host::Domain(_)) => None,
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        };
        if let Some(ip) = ip
            && !AddressPolicy::from_settings(settings).allows(ip)
        {
            return Err(invalid(&format!(
                "{ip} is a loopback, private or reserved address, which callbacks may not reach"
            )));
        }
        Ok(Self(url.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The events an endpoint wants: at least one, each known, no repeats.
pub fn parse_events(raw: &[String]) -> Result<Vec<EventType>, Error> {
    if raw.is_empty() {
        return Err(Error::Invalid(format!(
            "events: name at least one of {}",
            known_events()
        )));
    }
    let mut events = Vec::new();
    for name in raw {
        let event = EventType::parse(name).ok_or_else(|| {
            Error::Invalid(format!(
                "events: `{}` is not one of {}",
                name.chars().take(64).collect::<String>(),
                known_events()
            ))
        })?;
        if events.contains(&event) {
            return Err(Error::Invalid(format!("events: `{name}` is named twice")));
        }
        events.push(event);
    }
    Ok(events)
}

fn known_events() -> String {
    EventType::ALL.map(EventType::as_str).join(", ")
}

/// A signing key, shown to its owner once as `whsec_<base64>`.
pub struct Secret(Vec<u8>);

impl Secret {
    /// 32 random bytes from the operating system.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source");
        Self(key)
    }

    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self(key)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The form a receiver configures: `whsec_` and the key in base64.
    pub fn display(&self) -> String {
        format!("whsec_{}", BASE64.encode(&self.0))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// How signing keys are kept in `webhook_endpoints.secret`: a version byte, then either the key
/// itself (`0`, no `webhooks.secret_key` set) or (`1`) a random 96-bit nonce and the key sealed
/// with AES-256-GCM under SHA-256 of `webhooks.secret_key`, bound to the endpoint's id.
pub struct Sealer(Option<ring::aead::LessSafeKey>);

const PLAIN: u8 = 0;
const SEALED: u8 = 1;

impl Sealer {
    pub fn from_settings(settings: &WebhookSettings) -> Self {
        use secrecy::ExposeSecret;
        let secret = settings.secret_key.expose_secret();
        if secret.is_empty() {
            return Self(None);
        }
        let key = <Sha256 as sha2::Digest>::digest(secret.as_bytes());
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key)
            .expect("a 32-byte AES-256 key");
        Self(Some(ring::aead::LessSafeKey::new(key)))
    }

    /// The stored form of `secret` for endpoint `id`.
    pub fn seal(&self, id: Uuid, secret: &Secret) -> Vec<u8> {
        let Some(key) = &self.0 else {
            return [&[PLAIN][..], secret.bytes()].concat();
        };
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the operating system's random source");
        let mut sealed = secret.bytes().to_vec();
        key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(id.as_bytes()),
            &mut sealed,
        )
        .expect("AES-GCM seals any key this size");
        [&[SEALED][..], &nonce, &sealed].concat()
    }

    /// The signing key of endpoint `id` from its stored form; `None` when it was sealed and
    /// cannot be opened with the key in force (none set, or another one).
    pub fn open(&self, id: Uuid, stored: &[u8]) -> Option<Secret> {
        match stored.split_first() {
            Some((&PLAIN, key)) => Some(Secret::from_bytes(key.to_vec())),
            Some((&SEALED, rest)) if rest.len() > 12 => {
                let key = self.0.as_ref()?;
                let (nonce, sealed) = rest.split_at(12);
                let mut buffer = sealed.to_vec();
                let opened = key
                    .open_in_place(
                        ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?,
                        ring::aead::Aad::from(id.as_bytes()),
                        &mut buffer,
                    )
                    .ok()?;
                Some(Secret::from_bytes(opened.to_vec()))
            }
            _ => None,
        }
    }
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub fn sign(secret: &Secret, message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.bytes()).expect("HMAC takes any key");
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-id` of an event: the same for every attempt and every resend of it.
pub fn message_id(event_id: Uuid) -> String {
    format!("msg_{}", event_id.simple())
}

/// Records an event for every enabled endpoint of `owner` that wants `event`, inside the
/// caller's transaction (so it exists exactly when the change it describes does); nothing is
/// written when no endpoint wants it. Returns the deliveries created. This is how pipeline
/// runs and approvals emit theirs; runs emit through a trigger.
pub async fn emit(
    conn: &mut PgConnection,
    owner: Uuid,
    event: EventType,
    subject: Uuid,
    data: &serde_json::Value,
) -> Result<i32, sqlx::Error> {
    let created = sqlx::query_scalar!(
        r#"SELECT webhook_emit($1, $2, $3, $4) AS "created!""#,
        owner,
        event.as_str(),
        subject,
        sqlx::types::Json(data) as _
    )
    .fetch_one(conn)
    .await?;
    Ok(created)
}

/// An endpoint as the API shows it (never with its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Set when the endpoint kept failing and gets no more deliveries.
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
}

/// A checked new endpoint.
pub struct NewEndpoint {
    pub owner_id: Uuid,
    pub url: EndpointUrl,
    pub events: Vec<EventType>,
}

/// Stores the endpoint with a new secret, refusing once the owner has `max` of them (the
/// owner's row is locked, so two concurrent creates cannot both pass). Returns the endpoint
/// and the secret, which is never shown again.
pub async fn create_endpoint(
    pool: &PgPool,
    new: NewEndpoint,
    max: u32,
    sealer: &Sealer,
) -> Result<(Endpoint, Secret), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "SELECT 1 AS locked FROM users WHERE id = $1 FOR UPDATE",
        new.owner_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM webhook_endpoints WHERE owner_id = $1"#,
        new.owner_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if count >= i64::from(max) {
        return Err(Error::TooManyEndpoints { max });
    }
    let id = Uuid::new_v4();
    let secret = Secret::generate();
    let stored = sealer.seal(id, &secret);
    let events: Vec<String> = new.events.iter().map(|e| e.as_str().to_owned()).collect();
    let endpoint = sqlx::query_as!(
        Endpoint,
        "INSERT INTO webhook_endpoints (id, owner_id, url, events, secret)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, url, events, created_at, disabled_at, disabled_reason",
        id,
        new.owner_id,
        new.url.as_str(),
        &events,
        &stored
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((endpoint, secret))
}

/// The owner's endpoints, newest first.
pub async fn list_endpoints(
    pool: &PgPool,
    owner: Uuid,
    page: PageRequest,
) -> Result<(Vec<Endpoint>, i64), sqlx::Error> {
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM webhook_endpoints WHERE owner_id = $1"#,
        owner
    )
    .fetch_one(pool)
    .await?;
    let items = sqlx::query_as!(
        Endpoint,
        "SELECT id, url, events, created_at, disabled_at, disabled_reason
         FROM webhook_endpoints WHERE owner_id = $1
         ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
        owner,
        i64::from(page.per_page),
        page.offset()
    )
    .fetch_all(pool)
    .await?;
    Ok((items, total))
}

/// The owner's endpoint `id` (anyone else's is not found).
pub async fn get_endpoint(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Endpoint, Error> {
    sqlx::query_as!(
        Endpoint,
        "SELECT id, url, events, created_at, disabled_at, disabled_reason
         FROM webhook_endpoints WHERE id = $1 AND owner_id = $2",
        id,
        owner
    )
    .fetch_optional(pool)
    .await?
    .ok_or(Error::NotFound("endpoint"))
}

/// Deletes the owner's endpoint with its deliveries and their attempts.
pub async fn delete_endpoint(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<(), Error> {
    let deleted = sqlx::query!(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND owner_id = $2",
        id,
        owner
    )
    .execute(pool)
    .await?
    .rows_affected();
    if deleted == 0 {
        return Err(Error::NotFound("endpoint"));
    }
    Ok(())
}

/// One try at sending a delivery.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// The HTTP status the endpoint answered; `null` when it never answered.
    pub status_code: Option<i32>,
    /// Why the attempt failed without (or despite) an answer.
    pub error: Option<String>,
    pub duration_ms: i32,
    /// When the next attempt is due, if this one is retried.
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// An event on its way to one endpoint, with every attempt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    /// The event type (`run.status` …).
    #[serde(rename = "type")]
    pub kind: String,
    /// What the event is about (the run's id for `run.status`).
    pub subject: Uuid,
    pub sequence: i64,
    /// `pending` (attempts remain), `succeeded` or `failed`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: Vec<Attempt>,
}

/// The deliveries of the owner's endpoint, newest first, each with its attempts in order.
pub async fn list_deliveries(
    pool: &PgPool,
    owner: Uuid,
    endpoint: Uuid,
    page: PageRequest,
) -> Result<(Vec<Delivery>, i64), Error> {
    get_endpoint(pool, owner, endpoint).await?;
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM webhook_deliveries WHERE endpoint_id = $1"#,
        endpoint
    )
    .fetch_one(pool)
    .await?;
    let rows = sqlx::query!(
        r#"SELECT d.id, d.event_id, e.type AS kind, e.subject, e.sequence, d.status,
                d.created_at, d.next_attempt_at, d.finished_at
           FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
           WHERE d.endpoint_id = $1
           ORDER BY d.created_at DESC, d.id LIMIT $2 OFFSET $3"#,
        endpoint,
        i64::from(page.per_page),
        page.offset()
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut attempts: HashMap<Uuid, Vec<Attempt>> = HashMap::new();
    for a in sqlx::query!(
        "SELECT delivery_id, at, status_code, error, duration_ms, next_retry_at
         FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY id",
        &ids
    )
    .fetch_all(pool)
    .await?
    {
        attempts.entry(a.delivery_id).or_default().push(Attempt {
            at: a.at,
            status_code: a.status_code,
            error: a.error,
            duration_ms: a.duration_ms,
            next_retry_at: a.next_retry_at,
        });
    }
    let items = rows
        .into_iter()
        .map(|r| Delivery {
            attempts: attempts.remove(&r.id).unwrap_or_default(),
            next_attempt_at: (r.status == "pending").then_some(r.next_attempt_at),
            id: r.id,
            event_id: r.event_id,
            kind: r.kind,
            subject: r.subject,
            sequence: r.sequence,
            status: r.status,
            created_at: r.created_at,
            finished_at: r.finished_at,
        })
        .collect();
    Ok((items, total))
}

/// Sends the delivery again, now, with a fresh schedule of retries: the same event, the same
/// `webhook-id` (a receiver that has it already may ignore it). Refused on a disabled endpoint.
pub async fn resend(
    pool: &PgPool,
    owner: Uuid,
    endpoint: Uuid,
    delivery: Uuid,
) -> Result<(), Error> {
    let found = get_endpoint(pool, owner, endpoint).await?;
    if found.disabled_at.is_some() {
        return Err(Error::Disabled(found.disabled_reason.unwrap_or_default()));
    }
    let mut tx = pool.begin().await?;
    let updated = sqlx::query!(
        "UPDATE webhook_deliveries
         SET status = 'pending', tries = 0, next_attempt_at = clock_timestamp(),
             enqueued_at = NULL, finished_at = NULL
         WHERE id = $1 AND endpoint_id = $2",
        delivery,
        endpoint
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(Error::NotFound("delivery"));
    }
    // Wakes the relays at commit, as `webhook_emit` does.
    sqlx::query!("NOTIFY webhook_deliveries")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The channel `webhook_emit` notifies when deliveries are created.
pub const NOTIFY_CHANNEL: &str = "webhook_deliveries";

/// Marks up to `limit` due deliveries as enqueued and returns them, for the caller to add to
/// the stream: pending ones never enqueued (or whose retry is due), and ones enqueued longer
/// than `requeue_after` ago and still unanswered (their entry was lost). Postgres first, the
/// stream after: an entry lost in between is found again here after `requeue_after`.
pub async fn enqueue_due(
    pool: &PgPool,
    requeue_after: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE webhook_deliveries SET enqueued_at = clock_timestamp()
         WHERE id IN (
             SELECT id FROM webhook_deliveries
             WHERE status = 'pending' AND next_attempt_at <= clock_timestamp()
               AND (enqueued_at IS NULL
                    OR enqueued_at < clock_timestamp() - make_interval(secs => $1))
             ORDER BY next_attempt_at LIMIT $2
             FOR UPDATE SKIP LOCKED)
         RETURNING id",
        requeue_after.as_secs_f64(),
        limit
    )
    .fetch_all(pool)
    .await
}

/// A delivery a worker is about to attempt: the event, the endpoint and its key.
#[derive(Debug)]
pub struct Outgoing {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    /// Attempts made in the current schedule before this one.
    pub tries: i32,
    pub url: String,
    pub secret: Secret,
    pub message_id: String,
    /// The JSON body: `{type, timestamp, sequence, data}`.
    pub body: Vec<u8>,
}

/// The body of an event: its type, when it happened (RFC 3339), its sequence and its data.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: DateTime<Utc>,
    sequence: i64,
    data: &'a serde_json::Value,
}

/// The delivery, if it is still pending, due, and its endpoint enabled. An endpoint whose key
/// cannot be opened (sealed under another `webhooks.secret_key`) is an error: nothing is sent.
pub async fn outgoing(
    pool: &PgPool,
    delivery: Uuid,
    sealer: &Sealer,
) -> anyhow::Result<Option<Outgoing>> {
    let Some(row) = sqlx::query!(
        r#"SELECT d.id, d.tries, d.endpoint_id, p.url, p.secret, e.id AS event_id, e.type AS kind,
                e.sequence, e.data AS "data: sqlx::types::Json<serde_json::Value>", e.created_at
         FROM webhook_deliveries d
         JOIN webhook_events e ON e.id = d.event_id
         JOIN webhook_endpoints p ON p.id = d.endpoint_id
         WHERE d.id = $1 AND d.status = 'pending' AND d.next_attempt_at <= clock_timestamp()
           AND p.disabled_at IS NULL"#,
        delivery
    )
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let body = serde_json::to_vec(&Body {
        kind: &row.kind,
        timestamp: row.created_at,
        sequence: row.sequence,
        data: &row.data.0,
    })
    .expect("a JSON value serializes");
    let secret = sealer.open(row.endpoint_id, &row.secret).ok_or_else(|| {
        anyhow::anyhow!(
            "the signing key of endpoint {} is sealed under another webhooks.secret_key",
            row.endpoint_id
        )
    })?;
    Ok(Some(Outgoing {
        delivery_id: row.id,
        endpoint_id: row.endpoint_id,
        tries: row.tries,
        url: row.url,
        secret,
        message_id: message_id(row.event_id),
        body,
    }))
}

/// Deletes, at most `batch` at a time, the events older than `keep_days` none of whose
/// deliveries is still pending, with their deliveries and attempts (by cascade). Returns how
/// many events went. `keep_days` 0 keeps everything.
pub async fn prune(pool: &PgPool, keep_days: u32, batch: i64) -> Result<usize, sqlx::Error> {
    if keep_days == 0 {
        return Ok(0);
    }
    let mut total = 0usize;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM webhook_events WHERE id IN (
                 SELECT e.id FROM webhook_events e
                 WHERE e.created_at < now() - make_interval(days => $1)
                   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                   WHERE d.event_id = e.id AND d.status = 'pending')
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(keep_days as i32)
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected() as usize;
        total += deleted;
        if (deleted as i64) < batch {
            return Ok(total);
        }
    }
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Worth trying again: no answer (network error, timeout, refused address) or 429/5xx.
    Retryable {
        status: Option<u16>,
        error: Option<String>,
    },
    /// Not worth trying again: any other answer.
    Refused { status: u16 },
    /// Not sent: the destination is an address callbacks may not reach. Final, since another
    /// attempt would go to the same place.
    Blocked { error: String },
}

impl Outcome {
    /// Classifies an HTTP answer.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Outcome::Delivered { status },
            429 | 500..=599 => Outcome::Retryable {
                status: Some(status),
                error: None,
            },
            _ => Outcome::Refused { status },
        }
    }

    fn status(&self) -> Option<i32> {
        match self {
            Outcome::Delivered { status } | Outcome::Refused { status } => Some(i32::from(*status)),
            Outcome::Retryable { status, .. } => status.map(i32::from),
            Outcome::Blocked { .. } => None,
        }
    }

    /// What happened, in a few words (for a disabled endpoint's reason).
    pub fn describe(&self) -> String {
        match self {
            Outcome::Delivered { status } => format!("answered {status}"),
            Outcome::Retryable {
                status: Some(status),
                ..
            } => format!("answered {status}"),
            Outcome::Retryable { error, .. } => error.clone().unwrap_or_default(),
            Outcome::Refused { status } => format!("answered {status}"),
            Outcome::Blocked { error } => error.clone(),
        }
    }

    fn error(&self) -> Option<String> {
        match self {
            Outcome::Retryable { error, .. } => error.clone(),
            Outcome::Refused { status } => Some(format!("answered {status}; not retried")),
            Outcome::Blocked { error } => Some(error.clone()),
            Outcome::Delivered { .. } => None,
        }
    }
}

/// The delay before the retry after `tries` attempts (1 = after the first), jittered by up to a
/// fifth either way; `None` once the schedule is exhausted.
pub fn retry_delay(schedule: &[Duration], tries: usize, random: u32) -> Option<Duration> {
    let base = *schedule.get(tries.checked_sub(1)?)?;
    let fifth = base / 5;
    // `random` spread over [-fifth, +fifth].
    let span = fifth.as_millis() as u64 * 2;
    let offset = if span == 0 {
        0
    } else {
        u64::from(random) % (span + 1)
    };
    Some(base - fifth + Duration::from_millis(offset))
}

/// Records an attempt of `out` made at `at` that took `duration`, and what follows from it: the
/// delivery succeeds, is retried per `settings.retry_schedule`, or fails; the endpoint's run of
/// failures grows or resets, and an endpoint that failed `disable_after_failures` times in a row
/// over at least `disable_after_seconds` is disabled, its pending deliveries failed. Returns
/// when the next attempt is due, if any.
pub async fn record_attempt(
    pool: &PgPool,
    out: &Outgoing,
    at: DateTime<Utc>,
    duration: Duration,
    outcome: &Outcome,
    settings: &WebhookSettings,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let tries = out.tries.max(0) as usize + 1;
    let next_retry_at = match outcome {
        Outcome::Retryable { .. } => retry_delay(&settings.retry_schedule, tries, random_u32())
            .map(|d| Utc::now() + chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)),
        _ => None,
    };
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO webhook_attempts (delivery_id, at, status_code, error, duration_ms,
             next_retry_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        out.delivery_id,
        at,
        outcome.status(),
        outcome.error(),
        duration.as_millis().min(i32::MAX as u128) as i32,
        next_retry_at
    )
    .execute(&mut *tx)
    .await?;
    let status = match (outcome, next_retry_at) {
        (Outcome::Delivered { .. }, _) => "succeeded",
        (_, Some(_)) => "pending",
        (_, None) => "failed",
    };
    sqlx::query!(
        "UPDATE webhook_deliveries
         SET status = $2, tries = $3, enqueued_at = NULL,
             next_attempt_at = coalesce($4, next_attempt_at),
             finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE clock_timestamp() END
         WHERE id = $1 AND status = 'pending'",
        out.delivery_id,
        status,
        tries as i32,
        next_retry_at
    )
    .execute(&mut *tx)
    .await?;
    if matches!(outcome, Outcome::Delivered { .. }) {
        sqlx::query!(
            "UPDATE webhook_endpoints SET consecutive_failures = 0, failing_since = NULL
             WHERE id = $1",
            out.endpoint_id
        )
        .execute(&mut *tx)
        .await?;
    } else {
        let reason = format!(
            "disabled after {} failed attempts in a row over at least {} s; the last: {}",
            settings.disable_after_failures,
            settings.disable_after_seconds,
            outcome.describe()
        );
        let disabled = sqlx::query_scalar!(
            r#"UPDATE webhook_endpoints
               SET consecutive_failures = consecutive_failures + 1,
                   failing_since = coalesce(failing_since, $2),
                   disabled_at = CASE
                       WHEN disabled_at IS NULL AND consecutive_failures + 1 >= $3
                            AND coalesce(failing_since, $2)
                                <= clock_timestamp() - make_interval(secs => $4)
                       THEN clock_timestamp() ELSE disabled_at END,
                   disabled_reason = CASE
                       WHEN disabled_at IS NULL AND consecutive_failures + 1 >= $3
                            AND coalesce(failing_since, $2)
                                <= clock_timestamp() - make_interval(secs => $4)
                       THEN $5 ELSE disabled_reason END
               WHERE id = $1
               RETURNING disabled_at IS NOT NULL AS "disabled!""#,
            out.endpoint_id,
            at,
            settings.disable_after_failures as i32,
            settings.disable_after_seconds as f64,
            reason
        )
        .fetch_one(&mut *tx)
        .await?;
        if disabled {
            sqlx::query!(
                "UPDATE webhook_deliveries
                 SET status = 'failed', finished_at = clock_timestamp(), enqueued_at = NULL
                 WHERE endpoint_id = $1 AND status = 'pending'",
                out.endpoint_id
            )
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(next_retry_at.filter(|_| status == "pending"))
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    u32::from_le_bytes(bytes)
}

/// An XREADGROUP answer: entries (id and fields) by stream.
type XreadReply = HashMap<String, Vec<(String, HashMap<String, String>)>>;

/// The status callbacks stream and its consumer group: one entry per delivery due.
#[derive(Clone)]
pub struct WebhookQueue {
    client: Client,
    key: String,
    group: String,
    trim_after_hours: u64,
}

impl WebhookQueue {
    pub fn new(client: Client, keys: &Keys, group: &str, trim_after_hours: u64) -> Self {
        Self {
            client,
            key: keys.webhooks(),
            group: group.to_owned(),
            trim_after_hours,
        }
    }

    /// Adds the delivery's entry, trimming entries older than `trim_after_hours` (Postgres
    /// enqueues again whatever trimming loses).
    pub async fn enqueue(&self, delivery: Uuid) -> Result<String, fred::error::Error> {
        let now_ms = Utc::now().timestamp_millis().max(0) as u64;
        let horizon = now_ms.saturating_sub(self.trim_after_hours * 3_600_000);
        let cap = XCap::try_from((
            XCapKind::MinID,
            XCapTrim::AlmostExact,
            format!("{horizon}-0"),
        ))?;
        self.client
            .xadd(
                self.key.as_str(),
                false,
                cap,
                XID::Auto,
                vec![("delivery_id", delivery.to_string())],
            )
            .await
    }

    /// Creates the consumer group (and the stream) if missing.
    pub async fn ensure_group(&self) -> Result<(), fred::error::Error> {
        let created: Result<(), fred::error::Error> = self
            .client
            .xgroup_create(self.key.as_str(), self.group.as_str(), "0", true)
            .await;
        match created {
            Err(e) if !e.details().contains("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads up to `count` new entries for `consumer`, blocking up to `block_ms` for the first;
    /// call it on a client of its own. Returns `(entry id, delivery id)`; an entry naming no
    /// delivery has `None`.
    pub async fn read(
        &self,
        reader: &Client,
        consumer: &str,
        count: u64,
        block_ms: u64,
    ) -> Result<Vec<(String, Option<Uuid>)>, fred::error::Error> {
        let reply: Value = reader
            .xreadgroup(
                self.group.as_str(),
                consumer,
                Some(count.max(1)),
                Some(block_ms),
                false,
                self.key.as_str(),
                ">",
            )
            .await?;
        if reply.is_null() {
            return Ok(Vec::new());
        }
        let response: XreadReply = reply.into_xread_response()?;
        Ok(response
            .into_values()
            .flatten()
            .map(|(id, fields)| {
                let delivery = fields.get("delivery_id").and_then(|v| v.parse().ok());
                (id, delivery)
            })
            .collect())
    }

    pub async fn ack(&self, id: &str) -> Result<(), fred::error::Error> {
        self.client
            .xack::<(), _, _, _>(self.key.as_str(), self.group.as_str(), id)
            .await
    }

    /// Acknowledges up to `count` entries idle longer than `min_idle` on any consumer (one that
    /// died mid-attempt): their deliveries are enqueued again from Postgres, so the entries
    /// themselves are only cleared away. Returns how many.
    pub async fn clear_idle(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: u64,
    ) -> Result<usize, fred::error::Error> {
        // Redis 7 answers [next id, [claimed ids], [deleted ids]]; only the claimed count.
        let reply: Value = self
            .client
            .xautoclaim(
                self.key.as_str(),
                self.group.as_str(),
                consumer,
                min_idle.as_millis() as u64,
                "0-0",
                Some(count),
                true,
            )
            .await?;
        let ids: Vec<String> = match reply {
            Value::Array(mut parts) if parts.len() >= 2 => parts.swap_remove(1).convert()?,
            _ => Vec::new(),
        };
        if !ids.is_empty() {
            self.client
                .xack::<(), _, _, _>(self.key.as_str(), self.group.as_str(), ids.clone())
                .await?;
        }
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_loopback: bool, allow_private: bool) -> AddressPolicy {
        AddressPolicy {
            allow_loopback,
            allow_private,
        }
    }

    #[test]
    fn private_link_local_and_loopback_addresses_are_refused_by_default() {
        let strict = policy(false, false);
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::",
        ] {
            assert!(!strict.allows(ip.parse().unwrap()), "{ip} was allowed");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(strict.allows(ip.parse().unwrap()), "{ip} was refused");
        }
    }

    #[test]
    fn allowing_loopback_allows_nothing_private() {
        let local = policy(true, false);
        assert!(local.allows("127.0.0.1".parse().unwrap()));
        assert!(local.allows("::1".parse().unwrap()));
        assert!(!local.allows("10.0.0.1".parse().unwrap()));
        assert!(!local.allows("169.254.169.254".parse().unwrap()));
        assert!(policy(false, true).allows("10.0.0.1".parse().unwrap()));
        assert!(!policy(false, true).allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_retry_delay_follows_the_schedule_with_jitter_and_ends() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        for random in [0, 1, 1000, u32::MAX] {
            let d = retry_delay(&schedule, 1, random).unwrap();
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
                "{d:?}"
            );
            let d = retry_delay(&schedule, 2, random).unwrap();
            assert!(d >= Duration::from_secs(240) && d <= Duration::from_secs(360));
        }
        assert_eq!(retry_delay(&schedule, 3, 7), None);
        assert_eq!(retry_delay(&schedule, 0, 7), None);
    }

    #[test]
    fn answers_are_classified_for_retrying() {
        assert_eq!(Outcome::of_status(204), Outcome::Delivered { status: 204 });
        assert!(matches!(Outcome::of_status(429), Outcome::Retryable { .. }));
        assert!(matches!(Outcome::of_status(503), Outcome::Retryable { .. }));
        assert_eq!(Outcome::of_status(400), Outcome::Refused { status: 400 });
        assert_eq!(Outcome::of_status(301), Outcome::Refused { status: 301 });
    }

    fn settings_with_key(key: &str) -> WebhookSettings {
        let mut settings =
            crate::config::Settings::with_overrides([("local_stack", "true".into())])
                .unwrap()
                .webhooks;
        settings.secret_key = key.to_owned().into();
        settings
    }

    #[test]
    fn sealed_keys_open_only_with_their_key_and_endpoint() {
        let secret = Secret::generate();
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let sealer = Sealer::from_settings(&settings_with_key("a long random string"));
        let stored = sealer.seal(id, &secret);
        assert_eq!(stored[0], SEALED);
        assert!(!stored.windows(32).any(|w| w == secret.bytes()));
        assert_eq!(sealer.open(id, &stored).unwrap().bytes(), secret.bytes());
        assert!(sealer.open(other, &stored).is_none());
        let wrong = Sealer::from_settings(&settings_with_key("another string"));
        assert!(wrong.open(id, &stored).is_none());
        let none = Sealer::from_settings(&settings_with_key(""));
        assert!(none.open(id, &stored).is_none());
        // Kept plain when no key is set, and still readable once one is.
        let plain = none.seal(id, &secret);
        assert_eq!(plain[0], PLAIN);
        assert_eq!(sealer.open(id, &plain).unwrap().bytes(), secret.bytes());
    }

    #[test]
    fn the_signature_matches_the_specifications_example() {
        // The example of the Standard Webhooks specification.
        let secret = Secret::from_bytes(BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap());
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
