use coderun_tests::app::{spawn_app, spawn_app_with};
use serde_json::json;

#[tokio::test]
async fn a_new_endpoint_shows_its_secret_once_and_lists_without_it() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let created = app
        .post(
            "/api/v1/webhooks",
            &token,
            json!({"url": "https://hooks.example.org/coderun?team=7", "events": ["run.status", "approval.requested"]}),
        )
        .await
        .expect(201);
    let secret = created["secret"].as_str().unwrap();
    let key = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("base64 key");
    assert_eq!(key.len(), 32);
    assert_eq!(created["url"], "https://hooks.example.org/coderun?team=7");
    assert_eq!(
        created["events"],
        json!(["run.status", "approval.requested"])
    );
    assert!(created["id"].is_string());

    let page = app.get("/api/v1/webhooks", &token).await.expect(200);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], created["id"]);
    assert!(page["items"][0].get("secret").is_none(), "{page}");
    assert!(!page.to_string().contains(secret));
    let id = created["id"].as_str().unwrap();
    let deliveries = app
        .get(&format!("/api/v1/webhooks/{id}/deliveries"), &token)
        .await
        .expect(200);
    assert_eq!(deliveries["total"], 0);
}

#[tokio::test]
async fn refused_endpoints_store_nothing() {
    let app = spawn_app_with(vec![("webhooks.max_url_bytes", "100".into())]).await;
    let token = app.login("demo", "demo").await;
    let before = app.snapshot().await;
    for body in [
        json!({"url": "ftp://example.org/x", "events": ["run.status"]}),
        json!({"url": "not a url", "events": ["run.status"]}),
        json!({"url": "https://user:pw@example.org/", "events": ["run.status"]}),
        json!({"url": "https://token@example.org/", "events": ["run.status"]}),
        json!({"url": format!("https://example.org/{}", "a".repeat(100)), "events": ["run.status"]}),
        json!({"url": "https://example.org/", "events": []}),
        json!({"url": "https://example.org/", "events": ["run.finished"]}),
        json!({"url": "https://example.org/", "events": ["run.status", "run.status"]}),
        json!({"url": "http://169.254.169.254/latest/meta-data", "events": ["run.status"]}),
        json!({"url": "http://10.0.0.1/hook", "events": ["run.status"]}),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["run.status"]}),
        json!({"url": "http://[::1]/hook", "events": ["run.status"]}),
        json!({"url": "http://[::ffff:192.168.0.1]/hook", "events": ["run.status"]}),
        json!({"url": "https://example.org/", "events": "run.status"}),
        json!({"url": "https://example.org/"}),
        json!({"url": "https://example.org/", "events": ["run.status"], "secret": "mine"}),
    ] {
        app.post("/api/v1/webhooks", &token, body)
            .await
            .problem(422);
    }
    app.send(
        http::Method::POST,
        "/api/v1/webhooks",
        None,
        coderun_tests::app::Payload::Json(
            json!({"url": "https://example.org/", "events": ["run.status"]}),
        ),
    )
    .await
    .problem(401);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn a_user_may_register_only_so_many_endpoints() {
    let app = spawn_app_with(vec![("webhooks.max_endpoints_per_user", "2".into())]).await;
    let token = app.login("demo", "demo").await;
    for n in 0..2 {
        app.post(
            "/api/v1/webhooks",
            &token,
            json!({"url": format!("https://example.org/{n}"), "events": ["run.status"]}),
        )
        .await
        .expect(201);
    }
    let before = app.snapshot().await;
    app.post(
        "/api/v1/webhooks",
        &token,
        json!({"url": "https://example.org/3", "events": ["run.status"]}),
    )
    .await
    .problem(409);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn endpoints_are_their_owners_alone() {
    let app = spawn_app().await;
    let demo = app.login("demo", "demo").await;
    let admin = app.admin().await;
    let created = app
        .post(
            "/api/v1/webhooks",
            &demo,
            json!({"url": "https://example.org/hook", "events": ["run.status"]}),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();
    let page = app.get("/api/v1/webhooks", &admin).await.expect(200);
    assert_eq!(page["total"], 0);
    app.get(&format!("/api/v1/webhooks/{id}/deliveries"), &admin)
        .await
        .problem(404);
    app.delete(&format!("/api/v1/webhooks/{id}"), &admin)
        .await
        .problem(404);
    let someone = uuid::Uuid::new_v4();
    app.post(
        &format!("/api/v1/webhooks/{id}/deliveries/{someone}/resend"),
        &demo,
        json!({}),
    )
    .await
    .problem(404);
    app.delete(&format!("/api/v1/webhooks/{id}"), &demo)
        .await
        .expect(204);
    app.delete(&format!("/api/v1/webhooks/{id}"), &demo)
        .await
        .problem(404);
    let page = app.get("/api/v1/webhooks", &demo).await.expect(200);
    assert_eq!(page["total"], 0);
}

#[tokio::test]
async fn a_submit_records_a_run_status_event_only_for_a_user_with_an_endpoint() {
    let app = spawn_app_with(vec![("webhooks.allow_loopback", "true".into())]).await;
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "quiet", "python").await;
    app.submit(&token, task["id"].as_str().unwrap(), json!({}))
        .await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 0, "no endpoint: nothing recorded");

    app.post(
        "/api/v1/webhooks",
        &token,
        json!({"url": "http://127.0.0.1:9/hook", "events": ["run.status"]}),
    )
    .await
    .expect(201);
    let task = app.task(&token, "heard", "python").await;
    let run = app
        .submit(&token, task["id"].as_str().unwrap(), json!({}))
        .await;
    let (kind, subject, sqlx::types::Json(data)): (
        String,
        uuid::Uuid,
        sqlx::types::Json<serde_json::Value>,
    ) = sqlx::query_as("SELECT type, subject, data FROM webhook_events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(kind, "run.status");
    assert_eq!(subject.to_string(), run["id"].as_str().unwrap());
    assert_eq!(data["run"]["status"], "queued");
    assert_eq!(data["run"]["id"], run["id"]);
    assert!(data["run"].get("idempotency_key").is_none());
    assert_eq!(data["previous_status"], serde_json::Value::Null);
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(deliveries, 1);
    // The owner can see it through the API.
    let page = app.get("/api/v1/webhooks", &token).await.expect(200);
    let id = page["items"][0]["id"].as_str().unwrap();
    let deliveries = app
        .get(&format!("/api/v1/webhooks/{id}/deliveries"), &token)
        .await
        .expect(200);
    assert_eq!(deliveries["total"], 1);
    assert_eq!(deliveries["items"][0]["type"], "run.status");
    assert_eq!(deliveries["items"][0]["status"], "pending");
}
