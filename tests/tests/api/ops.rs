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

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// A concrete URI for an OpenAPI path template.
fn uri_of(path: &str) -> String {
    path.replace("{task_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{run_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{path}", "main.py")
        .replace("{pipeline_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{pipeline_run_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{stage}", "1")
        .replace("{webhook_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{delivery_id}", &uuid::Uuid::new_v4().to_string())
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_routes_the_server_serves() {
    let app = spawn_app().await;
    let doc = app
        .send(Method::GET, "/api/v1/openapi.json", None, Payload::Empty)
        .await
        .expect(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    // The router and the document come from one declaration; `web/openapi.json` pins the list
    // (a test in coderun-functions compares them), so this checks the two agree on the wire.
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "{:?}", paths.keys());

    let token = app.login("demo", "demo").await;
    for (path, item) in paths {
        let item = item.as_object().unwrap();
        for method in METHODS {
            let documented = item.contains_key(method);
            let http = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app
                .send(http, &uri_of(path), Some(&token), Payload::Json(json!({})))
                .await;
            let no_route =
                response.status == 404 && response.body.windows(13).any(|w| w == b"no such route");
            if documented {
                assert!(
                    !no_route && response.status != 405,
                    "{method} {path} is documented but not routed"
                );
            } else {
                assert!(
                    no_route || response.status == 405,
                    "{method} {path} is routed ({}) but not documented",
                    response.status
                );
            }
        }
    }
}
