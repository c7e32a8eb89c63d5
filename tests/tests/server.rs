//! The API through a real bound port, as the local stack serves it.

use coderun_functions::app;
use coderun_functions::state::AppState;
use coderun_shared::config::Settings;
use coderun_tests::app::{fresh_bucket, fresh_database, test_settings};
use serde_json::json;

#[tokio::test]
async fn the_server_answers_over_tcp_and_shuts_down_gracefully() {
    let database = fresh_database().await;
    let settings = Settings::with_overrides(test_settings(&database, &fresh_bucket())).unwrap();
    let state = AppState::build(settings).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::serve(listener, app::router(state), async {
        let _ = stopped.await;
    }));

    let base = format!("http://{address}");
    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "demo", "password": "demo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap();
    let task: serde_json::Value = client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth(token)
        .json(&json!({"name": "over tcp", "language": "python"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["id"].as_str().unwrap();
    let saved = client
        .put(format!("{base}/api/v1/tasks/{id}/files/src/main.py"))
        .bearer_auth(token)
        .body("print('hi')\n")
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 201);
    assert!(saved.headers().contains_key("x-request-id"));
    let text = client
        .get(format!("{base}/api/v1/tasks/{id}/files/src/main.py"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "print('hi')\n");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "the port is closed after shutdown"
    );
}

#[tokio::test]
async fn start_up_refuses_the_development_secrets_outside_the_local_stack() {
    // The S3 secret: refused by every binary, when the settings are read.
    let mut overrides = test_settings("unused", "unused");
    overrides.push(("local_stack", "false".into()));
    let err = Settings::with_overrides(overrides.clone()).unwrap_err();
    assert!(
        err.to_string().contains("CODERUN__STORAGE__SECRET_KEY"),
        "{err}"
    );
    // The JWT secret: refused by the API before it connects to anything (the worker never
    // reads it).
    overrides.push((
        "storage.secret_key",
        "the-real-secret-of-this-bucket".into(),
    ));
    let settings = Settings::with_overrides(overrides).unwrap();
    let err = AppState::build(settings).await.err().unwrap();
    assert!(
        err.to_string().contains("CODERUN__AUTH__JWT_SECRET"),
        "{err}"
    );
}

/// schemathesis (`tests/contract/schemathesis.sh`, `--checks all`, a fixed seed, a bounded
/// number of examples) against an API on a real port, as an admin: it finds no server error
/// and no answer the OpenAPI document does not describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_contract_under_schemathesis() {
    let database = fresh_database().await;
    let settings = Settings::with_overrides(test_settings(&database, &fresh_bucket())).unwrap();
    let state = AppState::build(settings).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::serve(listener, app::router(state), async {
        let _ = stopped.await;
    }));
    let login: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "admin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap().to_owned();

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contract/schemathesis.sh");
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .args([&base, &token])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run tests/contract/schemathesis.sh");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("schemathesis took {:.0?}", started.elapsed());
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
