//! `Idempotency-Key` on submit and retry: a repeated POST answers the run the first created,
//! never a second run; a key reused for a different request, or malformed, is refused and
//! stores nothing.

use coderun_shared::runs::{self, Change, RunStatus};
use coderun_tests::app::{Payload, TestApp, spawn_app};
use http::Method;
use serde_json::{Value, json};

async fn submit_with_key(
    app: &TestApp,
    token: &str,
    task_id: &str,
    key: &str,
    body: Value,
) -> coderun_tests::app::TestResponse {
    app.send_with(
        Method::POST,
        &format!("/api/v1/tasks/{task_id}/runs"),
        Some(token),
        &[("Idempotency-Key", key)],
        Payload::Json(body),
    )
    .await
}

async fn run_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_submission_repeated_with_the_same_key_answers_the_first_run() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "twice", "python").await;
    let task_id = task["id"].as_str().unwrap();
    let body = json!({"remarks": "first"});

    let first = submit_with_key(&app, &token, task_id, "key-1", body.clone()).await;
    let run = first.expect(202);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = submit_with_key(&app, &token, task_id, "key-1", body.clone()).await;
    let replayed = again.expect(202);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed["id"], run["id"]);
    assert_eq!(
        again.header("location").unwrap(),
        format!("/api/v1/runs/{}", run["id"].as_str().unwrap())
    );
    assert_eq!(run_count(&app).await, 1);
    assert_eq!(app.stream_len().await, 1, "one stream entry, not two");

    // Still the same run once it has finished, rather than a new one.
    let id = run["id"].as_str().unwrap().parse().unwrap();
    runs::transition(&app.db, id, RunStatus::Canceled, &Change::by("test"))
        .await
        .unwrap();
    let later = submit_with_key(&app, &token, task_id, "key-1", body).await;
    assert_eq!(later.expect(202)["id"], run["id"]);
    assert_eq!(run_count(&app).await, 1);
}

#[tokio::test]
async fn a_key_reused_for_a_different_submission_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "one", "python").await;
    let other = app.task(&token, "two", "python").await;
    let task_id = task["id"].as_str().unwrap();
    submit_with_key(&app, &token, task_id, "k", json!({"remarks": "a"}))
        .await
        .expect(202);
    let before = app.stored().await;

    let different_body = submit_with_key(&app, &token, task_id, "k", json!({"remarks": "b"})).await;
    let problem = different_body.problem(422);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{problem}"
    );
    let different_task = submit_with_key(
        &app,
        &token,
        other["id"].as_str().unwrap(),
        "k",
        json!({"remarks": "a"}),
    )
    .await;
    different_task.problem(422);
    assert_eq!(app.stored().await, before, "a refusal stores nothing");
    assert_eq!(run_count(&app).await, 1);
}

#[tokio::test]
async fn keys_belong_to_their_owner() {
    let app = spawn_app().await;
    let demo = app.login("demo", "demo").await;
    let (_, other) = app.user("student").await;
    for token in [&demo, &other] {
        let task = app.task(token, "mine", "python").await;
        let response = submit_with_key(
            &app,
            token,
            task["id"].as_str().unwrap(),
            "shared",
            json!({}),
        )
        .await;
        assert_eq!(response.header("idempotent-replayed"), None);
        response.expect(202);
    }
    assert_eq!(run_count(&app).await, 2);
}

#[tokio::test]
async fn malformed_keys_are_refused_before_anything_is_stored() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "bad keys", "python").await;
    let task_id = task["id"].as_str().unwrap();
    let before = app.stored().await;
    let long = "k".repeat(256);
    for key in ["", "two words", "tab\there", long.as_str()] {
        let response = app
            .send_with(
                Method::POST,
                &format!("/api/v1/tasks/{task_id}/runs"),
                Some(&token),
                &[("Idempotency-Key", key)],
                Payload::Empty,
            )
            .await;
        let problem = response.problem(400);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{key:?}: {problem}"
        );
    }
    assert_eq!(app.stored().await, before);
}

#[tokio::test]
async fn a_retry_repeated_with_the_same_key_creates_one_new_run() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "retry", "python").await;
    let run = app
        .submit(&token, task["id"].as_str().unwrap(), json!({}))
        .await;
    let id = run["id"].as_str().unwrap();
    runs::transition(
        &app.db,
        id.parse().unwrap(),
        RunStatus::Canceled,
        &Change::by("test"),
    )
    .await
    .unwrap();
    let retry = |key: &'static str| {
        let app = &app;
        let token = &token;
        async move {
            app.send_with(
                Method::POST,
                &format!("/api/v1/runs/{id}/retry"),
                Some(token),
                &[("Idempotency-Key", key)],
                Payload::Empty,
            )
            .await
        }
    };
    let first = retry("r-1").await.expect(202);
    let again = retry("r-1").await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.expect(202)["id"], first["id"]);
    assert_eq!(run_count(&app).await, 2);
    // The same key on a submit is a different request.
    submit_with_key(&app, &token, task["id"].as_str().unwrap(), "r-1", json!({}))
        .await
        .problem(422);
}
