//! Status callbacks end to end: endpoints registered through the API, events recorded by the
//! runs' own transitions (or emitted), relayed and sent by a real worker to a receiver in this
//! test that checks every signature with its own implementation of Standard Webhooks.

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use coderun_tests::https::{self, Certificate};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::{Platform, platform};
use uuid::Uuid;

const T: Duration = Duration::from_secs(60);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    body: Value,
    verified: bool,
}

#[derive(Default)]
struct Inbox {
    /// The key from `whsec_…`, once the endpoint exists.
    key: Option<Vec<u8>>,
    /// Statuses to answer, in turn; then `default`.
    answers: VecDeque<u16>,
    default: u16,
    got: Vec<Got>,
}

/// An HTTP receiver on 127.0.0.1.
#[derive(Clone)]
struct Receiver {
    inbox: Arc<Mutex<Inbox>>,
    url: String,
}

/// The Standard Webhooks check, written from the specification: HMAC-SHA256 with the base64
/// key over `{webhook-id}.{webhook-timestamp}.{body}`, compared with any `v1,` entry of the
/// space-separated `webhook-signature`, and a timestamp within five minutes.
fn verify(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - seconds).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    signatures.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|b64| BASE64.decode(b64).ok())
            .is_some_and(|sig| mac.clone().verify_slice(&sig).is_ok())
    })
}

async fn receive(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut inbox = inbox.lock().unwrap();
    let verified = inbox
        .key
        .as_deref()
        .is_some_and(|key| verify(key, &headers, &body));
    inbox.got.push(Got {
        id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
    });
    let status = inbox.answers.pop_front().unwrap_or(inbox.default);
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    async fn start(host: &str) -> Self {
        Self::start_on(host, None).await
    }

    /// The same receiver behind TLS, presenting `certificate`.
    async fn start_https(host: &str, certificate: Certificate) -> Self {
        Self::start_on(host, Some(certificate)).await
    }

    async fn start_on(host: &str, tls: Option<Certificate>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let inbox = Arc::new(Mutex::new(Inbox {
            default: 204,
            ..Default::default()
        }));
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inbox.clone());
        let scheme = match tls {
            Some(certificate) => {
                https::serve(listener, router, certificate).unwrap();
                "https"
            }
            None => {
                tokio::spawn(async move { axum::serve(listener, router).await });
                "http"
            }
        };
        Self {
            inbox,
            url: format!("{scheme}://{host}:{port}/hook"),
        }
    }

    /// Registers this receiver as an endpoint of the platform's user for `events`; returns
    /// the endpoint's id.
    async fn register(&self, p: &Platform, events: &[&str]) -> String {
        let created = p
            .app
            .post(
                "/api/v1/webhooks",
                &p.token,
                json!({"url": self.url, "events": events}),
            )
            .await
            .expect(201);
        let secret = created["secret"].as_str().unwrap();
        self.inbox.lock().unwrap().key = Some(
            BASE64
                .decode(secret.strip_prefix("whsec_").unwrap())
                .unwrap(),
        );
        created["id"].as_str().unwrap().to_owned()
    }

    fn answer(&self, statuses: &[u16], then: u16) {
        let mut inbox = self.inbox.lock().unwrap();
        inbox.answers = statuses.iter().copied().collect();
        inbox.default = then;
    }

    fn got(&self) -> Vec<Got> {
        self.inbox.lock().unwrap().got.clone()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + T;
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "{what}: got {got:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Loopback allowed (the receiver is on 127.0.0.1), retries 100 ms apart, a quick relay, and
/// signing keys sealed at rest.
fn callback_settings() -> Vec<(&'static str, String)> {
    vec![
        ("webhooks.allow_loopback", "true".into()),
        (
            "webhooks.secret_key",
            "a key that seals the signing keys".into(),
        ),
        ("webhooks.retry_schedule", "100ms 100ms 100ms".into()),
        ("webhooks.poll_ms", "50".into()),
        ("webhooks.timeout_ms", "2000".into()),
    ]
}

async fn me(p: &Platform) -> Uuid {
    let me = p.app.get("/api/v1/me", &p.token).await.expect(200);
    me["id"].as_str().unwrap().parse().unwrap()
}

/// Emits an event of the platform's user as a pipeline would, in a transaction of its own.
async fn emit(p: &Platform, owner: Uuid, data: Value) -> Uuid {
    let subject = Uuid::new_v4();
    let mut tx = p.app.db.begin().await.unwrap();
    coderun_shared::webhooks::emit(
        &mut tx,
        owner,
        coderun_shared::webhooks::EventType::PipelineRunStatus,
        subject,
        &data,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    subject
}

async fn deliveries(p: &Platform, endpoint: &str) -> Value {
    p.app
        .get(&format!("/api/v1/webhooks/{endpoint}/deliveries"), &p.token)
        .await
        .expect(200)
}

async fn wait_delivery(p: &Platform, endpoint: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let page = deliveries(p, endpoint).await;
        if let Some(d) = page["items"].get(0)
            && done(d)
        {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "delivery never settled: {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_receiver_sees_every_status_change_of_a_run_signed_and_in_order() {
    let p = platform(callback_settings()).await;
    let receiver = Receiver::start("127.0.0.1").await;
    receiver.register(&p, &["run.status"]).await;
    let worker = p.worker("w").await;
    let id = p.submit_python("print('called back')\n", json!({})).await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let phases = Platform::phases(&run);

    let got = receiver
        .wait_for("every phase of the run", |got| {
            got.iter()
                .any(|g| g.body["data"]["run"]["status"] == "succeeded")
        })
        .await;
    assert!(got.iter().all(|g| g.verified), "a signature did not verify");
    // At least once each; deduplicated by webhook-id, ordered by sequence.
    let mut unique: Vec<&Got> = Vec::new();
    for g in &got {
        if !unique.iter().any(|u| u.id == g.id) {
            unique.push(g);
        }
    }
    unique.sort_by_key(|g| g.body["sequence"].as_i64().unwrap());
    for g in &unique {
        assert_eq!(g.body["type"], "run.status");
        assert_eq!(g.body["data"]["run"]["id"], id.as_str());
        assert!(g.body["timestamp"].is_string());
    }
    let statuses: Vec<&str> = unique
        .iter()
        .map(|g| g.body["data"]["run"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, phases, "{got:#?}");
    let previous: Vec<Value> = unique
        .iter()
        .map(|g| g.body["data"]["previous_status"].clone())
        .collect();
    assert_eq!(previous[0], Value::Null);
    for (i, p) in previous.iter().enumerate().skip(1) {
        assert_eq!(p, &json!(statuses[i - 1]));
    }
    let last = unique.last().unwrap();
    assert_eq!(last.body["data"]["run"]["exit_code"], 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_500_is_retried_until_it_succeeds_and_a_400_is_not_retried() {
    let p = platform(callback_settings()).await;
    let flaky = Receiver::start("127.0.0.1").await;
    let refusing = Receiver::start("127.0.0.1").await;
    let flaky_id = flaky.register(&p, &["pipeline_run.status"]).await;
    let refusing_id = refusing.register(&p, &["pipeline_run.status"]).await;
    flaky.answer(&[500, 503], 204);
    refusing.answer(&[], 400);
    let worker = p.worker("w").await;
    let owner = me(&p).await;
    emit(&p, owner, json!({"pipeline_run": {"status": "running"}})).await;

    let got = flaky.wait_for("three attempts", |got| got.len() >= 3).await;
    assert!(got.iter().all(|g| g.verified));
    assert!(
        got.iter().all(|g| g.id == got[0].id),
        "one webhook-id across retries"
    );
    let delivery = wait_delivery(&p, &flaky_id, |d| d["status"] == "succeeded").await;
    let attempts = delivery["attempts"].as_array().unwrap();
    let codes: Vec<&Value> = attempts.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(503), &json!(204)]);
    assert!(attempts[0]["next_retry_at"].is_string());
    assert!(attempts[2]["next_retry_at"].is_null());
    assert!(attempts.iter().all(|a| a["duration_ms"].is_number()));

    let delivery = wait_delivery(&p, &refusing_id, |d| d["status"] == "failed").await;
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(delivery["attempts"][0]["status_code"], 400);
    // Nothing more comes, well past the whole retry schedule.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(refusing.got().len(), 1);
    assert_eq!(flaky.got().len(), 3);
    worker.stop().await;
}

#[tokio::test]
async fn retries_end_after_the_schedule_and_a_resend_makes_a_new_attempt() {
    let p = platform(callback_settings()).await;
    let receiver = Receiver::start("127.0.0.1").await;
    let endpoint = receiver.register(&p, &["pipeline_run.status"]).await;
    receiver.answer(&[], 500);
    let worker = p.worker("w").await;
    let owner = me(&p).await;
    emit(&p, owner, json!({"pipeline_run": {"status": "succeeded"}})).await;

    // The first attempt and one retry per delay of the schedule, then the delivery fails.
    let delivery = wait_delivery(&p, &endpoint, |d| d["status"] == "failed").await;
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 4);
    assert_eq!(receiver.got().len(), 4);

    receiver.answer(&[], 200);
    let delivery_id = delivery["id"].as_str().unwrap();
    p.app
        .post(
            &format!("/api/v1/webhooks/{endpoint}/deliveries/{delivery_id}/resend"),
            &p.token,
            json!({}),
        )
        .await
        .expect(202);
    let delivery = wait_delivery(&p, &endpoint, |d| d["status"] == "succeeded").await;
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 5);
    assert_eq!(attempts[4]["status_code"], 200);
    let got = receiver.got();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|g| g.verified && g.id == got[0].id));
    worker.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_consistently_is_disabled_with_the_reason() {
    let mut settings = callback_settings();
    settings.extend([
        ("webhooks.disable_after_failures", "3".to_string()),
        ("webhooks.disable_after_seconds", "0".to_string()),
        (
            "webhooks.retry_schedule",
            "100ms 100ms 100ms 100ms 100ms".to_string(),
        ),
    ]);
    let p = platform(settings).await;
    let receiver = Receiver::start("127.0.0.1").await;
    let endpoint = receiver.register(&p, &["pipeline_run.status"]).await;
    receiver.answer(&[], 503);
    let worker = p.worker("w").await;
    let owner = me(&p).await;
    emit(&p, owner, json!({"n": 1})).await;

    let delivery = wait_delivery(&p, &endpoint, |d| d["status"] == "failed").await;
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 3);
    let listed = p.app.get("/api/v1/webhooks", &p.token).await.expect(200);
    let listed = &listed["items"][0];
    assert!(listed["disabled_at"].is_string(), "{listed}");
    assert!(
        listed["disabled_reason"].as_str().unwrap().contains("503"),
        "{listed}"
    );
    // A disabled endpoint gets nothing new, and a resend is refused.
    emit(&p, owner, json!({"n": 2})).await;
    assert_eq!(deliveries(&p, &endpoint).await["total"], 1);
    let delivery_id = delivery["id"].as_str().unwrap();
    p.app
        .post(
            &format!("/api/v1/webhooks/{endpoint}/deliveries/{delivery_id}/resend"),
            &p.token,
            json!({}),
        )
        .await
        .problem(409);
    assert_eq!(receiver.got().len(), 3);
    worker.stop().await;
}

/// A `webhooks.extra_roots_file` that cannot be read, or holds no certificate, stops the
/// sender (so the worker) at start with the setting named: callbacks are never sent without
/// the roots the operator meant them to trust.
#[test]
fn an_unreadable_or_certificate_less_extra_roots_file_is_refused_at_start() {
    let base = coderun_shared::config::Settings::with_overrides([("local_stack", "true".into())])
        .unwrap()
        .webhooks;
    let dir = std::env::temp_dir().join(format!("coderun-roots-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not-pem.txt");
    std::fs::write(&not_pem, "these are not the roots you are looking for\n").unwrap();
    for (file, says) in [
        (
            "/nonexistent/roots.pem".to_owned(),
            "read webhooks.extra_roots_file",
        ),
        (not_pem.display().to_string(), "holds no PEM certificate"),
    ] {
        let settings = coderun_shared::config::WebhookSettings {
            extra_roots_file: file.clone(),
            ..base.clone()
        };
        let error = match coderun_worker::webhooks::Sender::new(&settings) {
            Ok(_) => panic!("{file}: the sender was built"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(says), "{file}: {error}");
        assert!(error.contains(&file), "{file}: {error}");
    }
    // The test CA's file is fine.
    let settings = coderun_shared::config::WebhookSettings {
        extra_roots_file: https::ca_file().display().to_string(),
        ..base
    };
    assert!(coderun_worker::webhooks::Sender::new(&settings).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn https_endpoints_are_called_over_tls_and_an_untrusted_certificate_is_refused() {
    let mut settings = callback_settings();
    settings.push((
        "webhooks.extra_roots_file",
        https::ca_file().display().to_string(),
    ));
    let p = platform(settings).await;
    let trusted = Receiver::start_https("localhost", Certificate::SignedByTestCa).await;
    let untrusted = Receiver::start_https("localhost", Certificate::Untrusted).await;
    trusted.register(&p, &["pipeline_run.status"]).await;
    let refused = untrusted.register(&p, &["pipeline_run.status"]).await;
    let worker = p.worker("w").await;
    let owner = me(&p).await;
    emit(&p, owner, json!({"n": 1})).await;

    let got = trusted
        .wait_for("the callback over https", |got| !got.is_empty())
        .await;
    assert!(got[0].verified, "{got:#?}");
    assert_eq!(got[0].body["data"]["n"], 1);
    // The self-signed certificate fails the handshake: nothing reaches that receiver, and the
    // attempt says why (and is retried, as a network error is).
    let delivery = wait_delivery(&p, &refused, |d| {
        d["attempts"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let error = delivery["attempts"][0]["error"].as_str().unwrap();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert!(delivery["attempts"][0]["status_code"].is_null());
    assert!(untrusted.got().is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn old_events_are_pruned_with_their_deliveries_once_none_is_pending() {
    let p = platform(callback_settings()).await;
    let receiver = Receiver::start("127.0.0.1").await;
    receiver.register(&p, &["pipeline_run.status"]).await;
    let owner = me(&p).await;
    // No worker: every delivery stays pending until the test settles it.
    let old_done = emit(&p, owner, json!({"n": 1})).await;
    let old_pending = emit(&p, owner, json!({"n": 2})).await;
    let recent_done = emit(&p, owner, json!({"n": 3})).await;
    let db = &p.app.db;
    for (subject, age_days, status) in [
        (old_done, 40, "succeeded"),
        (old_pending, 40, "pending"),
        (recent_done, 1, "succeeded"),
    ] {
        sqlx::query(
            "UPDATE webhook_events SET created_at = now() - make_interval(days => $2)
             WHERE subject = $1",
        )
        .bind(subject)
        .bind(age_days)
        .execute(db)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $2
             WHERE event_id = (SELECT id FROM webhook_events WHERE subject = $1)",
        )
        .bind(subject)
        .bind(status)
        .execute(db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, at, status_code, duration_ms)
             SELECT d.id, now(), 204, 1 FROM webhook_deliveries d
             JOIN webhook_events e ON e.id = d.event_id WHERE e.subject = $1",
        )
        .bind(subject)
        .execute(db)
        .await
        .unwrap();
    }

    // Kept forever with 0; then only the old event whose delivery is over goes, in batches.
    assert_eq!(coderun_shared::webhooks::prune(db, 0, 1).await.unwrap(), 0);
    assert_eq!(coderun_shared::webhooks::prune(db, 30, 1).await.unwrap(), 1);
    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT subject FROM webhook_events ORDER BY sequence")
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(left, vec![old_pending, recent_done]);
    let (deliveries, attempts): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_deliveries), (SELECT count(*) FROM webhook_attempts)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!((deliveries, attempts), (2, 2));
    assert_eq!(coderun_shared::webhooks::prune(db, 30, 1).await.unwrap(), 0);
}

#[tokio::test]
async fn private_and_loopback_addresses_are_refused_even_behind_a_name() {
    // Loopback not allowed: `localhost` resolves to it, and the check is on the resolved address.
    let mut settings = callback_settings();
    settings.retain(|(k, _)| *k != "webhooks.allow_loopback");
    let p = platform(settings).await;
    let receiver = Receiver::start("localhost").await;
    let endpoint = receiver.register(&p, &["pipeline_run.status"]).await;
    // A private address, stored as if registered before the rules changed.
    let owner = me(&p).await;
    let private = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, owner_id, url, events, secret)
         VALUES ($1, $2, 'http://10.0.0.1/hook', '{pipeline_run.status}', '\\x00')",
    )
    .bind(private)
    .bind(owner)
    .execute(&p.app.db)
    .await
    .unwrap();
    let worker = p.worker("w").await;
    emit(&p, owner, json!({"n": 1})).await;

    let named = wait_delivery(&p, &endpoint, |d| d["status"] == "failed").await;
    let attempts = named["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "a refused address is not retried: {named}"
    );
    assert!(attempts[0]["status_code"].is_null());
    let error = attempts[0]["error"].as_str().unwrap();
    assert!(
        error.contains("127.0.0.1") || error.contains("::1"),
        "{error}"
    );
    let literal = wait_delivery(&p, &private.to_string(), |d| d["status"] == "failed").await;
    let error = literal["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("10.0.0.1"), "{error}");
    assert!(receiver.got().is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn deliveries_whose_entry_never_came_or_was_lost_are_sent_from_postgres() {
    let mut settings = callback_settings();
    settings.extend([
        ("webhooks.timeout_ms", "500".to_string()),
        ("webhooks.requeue_after_seconds", "1".to_string()),
    ]);
    let p = platform(settings).await;
    let receiver = Receiver::start("127.0.0.1").await;
    let endpoint = receiver.register(&p, &["pipeline_run.status"]).await;
    let owner = me(&p).await;
    // No worker yet: the notification finds no relay, so nothing reaches the stream.
    emit(&p, owner, json!({"n": 1})).await;
    emit(&p, owner, json!({"n": 2})).await;
    // The second one's entry "was added and lost" (say, Redis restarted without it).
    sqlx::query(
        "UPDATE webhook_deliveries d SET enqueued_at = clock_timestamp()
         FROM webhook_events e WHERE e.id = d.event_id AND e.data->>'n' = '2'",
    )
    .execute(&p.app.db)
    .await
    .unwrap();
    let worker = p.worker("w").await;
    let got = receiver.wait_for("both events", |got| got.len() >= 2).await;
    let mut ns: Vec<i64> = got
        .iter()
        .map(|g| g.body["data"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, [1, 2]);
    assert!(got.iter().all(|g| g.verified));
    let page = deliveries(&p, &endpoint).await;
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "succeeded"),
        "{page:#}"
    );
    worker.stop().await;
}
