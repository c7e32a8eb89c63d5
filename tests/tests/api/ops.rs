use std::collections::BTreeSet;

use coderun_functions::app;
use coderun_shared::storage::Storage;
use coderun_tests::app::{Payload, spawn_app};
use http::Method;
use serde_json::json;

#[tokio::test]
async fn health_and_readiness_answer_when_the_servers_do() {
    let app = spawn_app().await;
    let health = app
        .send(Method::GET, "/healthz", None, Payload::Empty)
        .await
        .expect(200);
    assert_eq!(health["status"], "ok");
    let ready = app
        .send(Method::GET, "/readyz", None, Payload::Empty)
        .await
        .expect(200);
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn readiness_fails_when_the_bucket_is_gone() {
    let app = spawn_app().await;
    let mut state = app.state.clone();
    let mut storage = state.settings.storage.clone();
    storage.bucket = "no-such-bucket-here".into();
    state.storage = Storage::new(&storage);
    let router = app::router(state);
    let broken = coderun_tests::app::TestApp { router, ..app };
    broken
        .send(Method::GET, "/readyz", None, Payload::Empty)
        .await
        .problem(503);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    app.get("/api/v1/tasks", &token).await.expect(200);
    let metrics = app
        .send(Method::GET, "/metrics", None, Payload::Empty)
        .await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("route=\"/api/v1/tasks\""), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_and_requests_carry_an_id() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let missing = app.get("/api/v1/nothing", &token).await;
    missing.problem(404);
    assert!(
        missing
            .header("x-request-id")
            .is_some_and(|id| !id.is_empty())
    );
    app.send(
        Method::PUT,
        "/api/v1/tasks",
        Some(&token),
        Payload::Json(json!({})),
    )
    .await
    .problem(405);
    app.send(Method::DELETE, "/api/v1/me", Some(&token), Payload::Empty)
        .await
        .problem(405);
}

/// Every route of the design's table that exists so far, as (method, OpenAPI path).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/login"),
    ("get", "/api/v1/me"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users:batch"),
    ("post", "/api/v1/tasks"),
    ("get", "/api/v1/tasks"),
    ("get", "/api/v1/tasks/{task_id}"),
    ("patch", "/api/v1/tasks/{task_id}"),
    ("delete", "/api/v1/tasks/{task_id}"),
    ("get", "/api/v1/tasks/{task_id}/files/{path}"),
    ("put", "/api/v1/tasks/{task_id}/files/{path}"),
    ("delete", "/api/v1/tasks/{task_id}/files/{path}"),
    ("post", "/api/v1/tasks/{task_id}/files:batch"),
    ("post", "/api/v1/tasks/{task_id}/files:move"),
    ("get", "/api/v1/tasks/{task_id}/archive"),
    ("post", "/api/v1/tasks/{task_id}/runs"),
    ("get", "/api/v1/tasks/{task_id}/runs"),
    ("get", "/api/v1/runs/{run_id}"),
    ("post", "/api/v1/runs/{run_id}/stop"),
    ("post", "/api/v1/runs/{run_id}/retry"),
    ("get", "/api/v1/runs/{run_id}/log"),
    ("get", "/api/v1/runs/{run_id}/log/stream"),
    ("get", "/api/v1/runs/{run_id}/log/download"),
    ("get", "/api/v1/runs/{run_id}/outputs"),
    ("get", "/api/v1/languages"),
    ("get", "/api/v1/specs"),
    ("get", "/api/v1/datasets"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
];

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = spawn_app().await;
    let doc = app
        .send(Method::GET, "/api/v1/openapi.json", None, Payload::Empty)
        .await
        .expect(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());

    // And every documented route is served: nothing answers "no such route".
    let token = app.login("demo", "demo").await;
    for (method, path) in ROUTES {
        let uri = path
            .replace("{task_id}", &uuid::Uuid::new_v4().to_string())
            .replace("{run_id}", &uuid::Uuid::new_v4().to_string())
            .replace("{path}", "main.py");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = app
            .send(method, &uri, Some(&token), Payload::Json(json!({})))
            .await;
        let routed = !(response.status == 404
            && response.body.windows(13).any(|w| w == b"no such route"))
            && response.status != 405;
        assert!(routed, "{path} is documented but not routed");
    }
}
