//! Pipelines against real Postgres, Redis and S3, with no worker: step runs are moved with the
//! shared functions a worker uses (`runs::transition`, `runs::finish`), so what is checked is
//! the advance the database makes in the transaction that records a step's end.

use coderun_shared::pipelines;
use coderun_shared::runs::{self, RunStatus};
use coderun_tests::app::{TestApp, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::runs::{advance, complete, end};

/// A pipeline of three stages: `prep`; `a` and `b` in parallel; `report`.
fn three_stages(task: &str) -> Value {
    json!({
        "name": "course pipeline",
        "params": {"SEED": "1", "MODEL": "linear"},
        "stages": [
            {"name": "prepare", "steps": [{"name": "prep", "task_id": task}]},
            {"name": "train", "params": {"MODEL": "tree"}, "steps": [
                {"name": "a", "task_id": task, "params": {"DEPTH": "3"}},
                {"name": "b", "task_id": task, "command": "python3 -u main.py b"}
            ]},
            {"name": "evaluate", "steps": [{"name": "report", "task_id": task}]}
        ]
    })
}

async fn setup(app: &TestApp) -> (String, String) {
    let (_, token) = app.user("student").await;
    let task = app.task(&token, "steps", "python").await;
    (token, task["id"].as_str().unwrap().to_owned())
}

async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    app.post("/api/v1/pipelines", token, body).await.expect(201)
}

async fn start(app: &TestApp, token: &str, pipeline: &Value, body: Value) -> Value {
    let id = pipeline["id"].as_str().unwrap();
    app.post(&format!("/api/v1/pipelines/{id}/runs"), token, body)
        .await
        .expect(202)
}

async fn read(app: &TestApp, token: &str, run: &Value) -> Value {
    let id = run["id"].as_str().unwrap();
    app.get(&format!("/api/v1/pipeline-runs/{id}"), token)
        .await
        .expect(200)
}

/// The run id of step `name` in the grid.
fn step(run: &Value, name: &str) -> Value {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["steps"].as_array().unwrap().iter())
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {run}"))
        .clone()
}

fn run_id(run: &Value, name: &str) -> Uuid {
    step(run, name)["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("step {name} has no run: {run}"))
        .parse()
        .unwrap()
}

fn stage_statuses(run: &Value) -> Vec<String> {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn status_of(app: &TestApp, run: Uuid) -> RunStatus {
    runs::get(&app.db, run).await.unwrap().unwrap().status
}

#[tokio::test]
async fn bad_pipeline_definitions_are_refused_with_nothing_stored() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let (_, other) = app.user("student").await;
    let strangers = app.task(&other, "not yours", "python").await;
    let before = app.snapshot().await;
    let step = |name: &str, task: &str| json!({"name": name, "task_id": task});
    let cases = [
        (json!({"name": "p", "stages": []}), "at least one stage"),
        (
            json!({"name": "p", "stages": [{"name": "s", "steps": []}]}),
            "stage `s`",
        ),
        (
            json!({"name": "p", "stages": [{"name": "s", "steps": [step("x", &Uuid::new_v4().to_string())]}]}),
            "stage `s`, step `x`",
        ),
        (
            json!({"name": "p", "stages": [{"name": "s", "steps": [step("x", strangers["id"].as_str().unwrap())]}]}),
            "stage `s`, step `x`",
        ),
        (
            json!({"name": "p", "stages": [
                {"name": "one", "steps": [step("x", &task)]},
                {"name": "two", "steps": [step("x", &task)]}]}),
            "stage `two`, step `x`",
        ),
        (
            json!({"name": "p", "stages": [{"name": "s", "steps": [step("../x", &task)]}]}),
            "`../x`",
        ),
        (
            json!({"name": "p", "params": {"lower": "1"}, "stages": [{"name": "s", "steps": [step("x", &task)]}]}),
            "`lower`",
        ),
        (
            json!({"name": "p", "stages": [{"name": "s", "steps": [
                {"name": "x", "task_id": task, "params": {"A-B": "1"}}]}]}),
            "stage `s`, step `x`, params",
        ),
        (
            json!({"name": "p", "stages": [{"name": "s", "steps": [
                {"name": "x", "task_id": task, "spec": "enormous"}]}]}),
            "unknown spec",
        ),
    ];
    for (body, names) in cases {
        let problem = app
            .post("/api/v1/pipelines", &token, body.clone())
            .await
            .problem(422);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(names), "{body}: {detail}");
    }
    // A reference to another step (the only way to make a cycle) is not part of the shape.
    let needs = json!({"name": "p", "stages": [{"name": "s", "steps": [
        {"name": "x", "task_id": task, "needs": ["x"]}]}]});
    app.post("/api/v1/pipelines", &token, needs)
        .await
        .problem(422);
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused definition stores nothing"
    );
}

#[tokio::test]
async fn an_update_makes_a_new_version_and_runs_keep_theirs() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let pipeline = create(&app, &token, three_stages(&task)).await;
    assert_eq!(pipeline["version"], 1);
    let run = start(&app, &token, &pipeline, json!({})).await;
    let id = pipeline["id"].as_str().unwrap();
    let updated = app
        .patch(
            &format!("/api/v1/pipelines/{id}"),
            &token,
            json!({"stages": [{"name": "only", "steps": [{"name": "z", "task_id": task}]}]}),
        )
        .await
        .expect(200);
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["stages"].as_array().unwrap().len(), 1);
    let kept = read(&app, &token, &run).await;
    assert_eq!(kept["version"], 1);
    assert_eq!(kept["stages"].as_array().unwrap().len(), 3);
    // An invalid update stores nothing.
    let before = app.snapshot().await;
    app.patch(
        &format!("/api/v1/pipelines/{id}"),
        &token,
        json!({"stages": []}),
    )
    .await
    .problem(422);
    assert_eq!(app.snapshot().await, before);
    // Deleting waits until no run is active.
    app.delete(&format!("/api/v1/pipelines/{id}"), &token)
        .await
        .problem(409);
}

#[tokio::test]
async fn students_see_only_their_own_pipelines_and_staff_read_all() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let pipeline = create(&app, &token, three_stages(&task)).await;
    let id = pipeline["id"].as_str().unwrap();
    let (_, stranger) = app.user("student").await;
    app.get(&format!("/api/v1/pipelines/{id}"), &stranger)
        .await
        .problem(404);
    let listed = app.get("/api/v1/pipelines", &stranger).await.expect(200);
    assert_eq!(listed["total"], 0);
    let mine = app
        .get("/api/v1/pipelines?per_page=1", &token)
        .await
        .expect(200);
    assert_eq!(mine["total"], 1);
    assert_eq!(mine["per_page"], 1);
    let (_, teacher) = app.user("teacher").await;
    app.get(&format!("/api/v1/pipelines/{id}"), &teacher)
        .await
        .expect(200);
    app.post(
        &format!("/api/v1/pipelines/{id}/runs"),
        &stranger,
        json!({}),
    )
    .await
    .problem(404);
    app.post(&format!("/api/v1/pipelines/{id}/runs"), &teacher, json!({}))
        .await
        .problem(403);
}

#[tokio::test]
async fn stages_run_in_order_and_the_next_is_queued_with_the_end_of_the_last() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let pipeline = create(&app, &token, three_stages(&task)).await;
    let run = start(&app, &token, &pipeline, json!({"params": {"SEED": "42"}})).await;
    assert_eq!(run["status"], "running");
    assert_eq!(stage_statuses(&run), ["running", "waiting", "waiting"]);
    let prep = run_id(&run, "prep");
    assert_eq!(status_of(&app, prep).await, RunStatus::Queued);
    assert!(step(&run, "a")["run_id"].is_null());
    // Parameters merge: defaults → run values → stage → step.
    assert_eq!(
        step(&run, "a")["params"],
        json!({"SEED": "42", "MODEL": "tree", "DEPTH": "3"})
    );
    assert_eq!(
        step(&run, "prep")["params"],
        json!({"SEED": "42", "MODEL": "linear"})
    );
    // The step's run is an ordinary run, linked to its pipeline run, in the stream.
    let entries = app.stream_entries().await;
    assert!(
        entries
            .iter()
            .any(|(_, e)| e.get("run_id") == Some(&prep.to_string()))
    );

    complete(&app, prep, 0).await;
    // The end of `prep` queued the next stage in the same transaction.
    let run = read(&app, &token, &run).await;
    assert_eq!(stage_statuses(&run), ["succeeded", "running", "waiting"]);
    let (a, b) = (run_id(&run, "a"), run_id(&run, "b"));
    assert_eq!(status_of(&app, a).await, RunStatus::Queued);
    let b_run = runs::get(&app.db, b).await.unwrap().unwrap();
    assert_eq!(b_run.command, "python3 -u main.py b");
    assert_eq!(
        b_run.pipeline_run_id.map(|id| id.to_string()).as_deref(),
        run["id"].as_str()
    );
    assert_eq!(b_run.pipeline_step.as_deref(), Some("b"));
    let shown = app
        .get(&format!("/api/v1/runs/{b}"), &token)
        .await
        .expect(200);
    assert_eq!(shown["pipeline_run_id"], run["id"]);
    // Advancing again starts nothing twice.
    assert!(
        pipelines::advance_stalled(&app.db, "test")
            .await
            .unwrap()
            .is_empty()
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(queued, 3);

    complete(&app, a, 0).await;
    let run = read(&app, &token, &run).await;
    assert!(step(&run, "report")["run_id"].is_null(), "b is still going");
    complete(&app, b, 0).await;
    let run = read(&app, &token, &run).await;
    let report = run_id(&run, "report");
    complete(&app, report, 0).await;
    let run = read(&app, &token, &run).await;
    assert_eq!(run["status"], "succeeded");
    assert!(run["finished_at"].is_string());
    assert_eq!(
        stage_statuses(&run),
        ["succeeded", "succeeded", "succeeded"]
    );

    let id = pipeline["id"].as_str().unwrap();
    let listed = app
        .get(
            &format!("/api/v1/pipelines/{id}/runs?status=succeeded"),
            &token,
        )
        .await
        .expect(200);
    assert_eq!(listed["total"], 1);
    let none = app
        .get(
            &format!("/api/v1/pipelines/{id}/runs?status=running"),
            &token,
        )
        .await
        .expect(200);
    assert_eq!(none["total"], 0);
}

#[tokio::test]
async fn a_failing_step_fails_the_pipeline_run_and_cancels_the_rest() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let pipeline = create(&app, &token, three_stages(&task)).await;
    let run = start(&app, &token, &pipeline, json!({})).await;
    complete(&app, run_id(&run, "prep"), 0).await;
    let run = read(&app, &token, &run).await;
    let (a, b) = (run_id(&run, "a"), run_id(&run, "b"));
    // `a` fails while `b` has not started.
    complete(&app, a, 3).await;
    let run = read(&app, &token, &run).await;
    assert_eq!(run["status"], "failed");
    assert!(run["reason"].as_str().unwrap().contains("`a`"));
    assert_eq!(status_of(&app, b).await, RunStatus::Canceled);
    assert_eq!(step(&run, "report")["status"], "canceled");
    assert!(step(&run, "report")["run_id"].is_null());
}

#[tokio::test]
async fn a_step_allowed_to_fail_lets_the_pipeline_go_on() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let mut body = three_stages(&task);
    body["stages"][1]["steps"][0]["allow_failure"] = json!(true);
    let pipeline = create(&app, &token, body).await;
    let run = start(&app, &token, &pipeline, json!({})).await;
    complete(&app, run_id(&run, "prep"), 0).await;
    let run = read(&app, &token, &run).await;
    complete(&app, run_id(&run, "a"), 1).await;
    complete(&app, run_id(&run, "b"), 0).await;
    let run = read(&app, &token, &run).await;
    assert_eq!(run["status"], "running");
    assert_eq!(stage_statuses(&run)[1], "succeeded");
    complete(&app, run_id(&run, "report"), 0).await;
    assert_eq!(read(&app, &token, &run).await["status"], "succeeded");
}

#[tokio::test]
async fn stopping_mid_stage_stops_active_steps_and_cancels_the_rest() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let pipeline = create(&app, &token, three_stages(&task)).await;
    let run = start(&app, &token, &pipeline, json!({})).await;
    complete(&app, run_id(&run, "prep"), 0).await;
    let run = read(&app, &token, &run).await;
    let (a, b) = (run_id(&run, "a"), run_id(&run, "b"));
    advance(
        &app,
        a,
        &[
            RunStatus::Dispatched,
            RunStatus::Pending,
            RunStatus::Running,
        ],
    )
    .await;
    let id = run["id"].as_str().unwrap();
    let stopped = app
        .post(
            &format!("/api/v1/pipeline-runs/{id}/stop"),
            &token,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(status_of(&app, a).await, RunStatus::Stopping);
    assert_eq!(status_of(&app, b).await, RunStatus::Canceled);
    assert_eq!(step(&stopped, "report")["status"], "canceled");
    // The stopped step's end changes nothing any more.
    let change = runs::Change::by("worker:test").reason(runs::Reason::StoppedByUser);
    runs::finish(&app.db, a, RunStatus::Stopped, &change)
        .await
        .unwrap();
    let after = read(&app, &token, &run).await;
    assert_eq!(after["status"], "stopped");
    assert!(step(&after, "report")["run_id"].is_null());
}

#[tokio::test]
async fn a_retry_reuses_the_succeeded_steps_and_reruns_the_others() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let pipeline = create(&app, &token, three_stages(&task)).await;
    let first = start(&app, &token, &pipeline, json!({"params": {"SEED": "7"}})).await;
    let prep = run_id(&first, "prep");
    complete(&app, prep, 0).await;
    let first = read(&app, &token, &first).await;
    let (a, b) = (run_id(&first, "a"), run_id(&first, "b"));
    advance(&app, a, &[RunStatus::Dispatched, RunStatus::Running]).await;
    advance(&app, b, &[RunStatus::Dispatched, RunStatus::Running]).await;
    end(&app, a, 0).await;
    end(&app, b, 1).await;
    let first = read(&app, &token, &first).await;
    assert_eq!(first["status"], "failed");
    let id = first["id"].as_str().unwrap();
    // Only a finished pipeline run is retried; this one is.
    let retried = app
        .post(
            &format!("/api/v1/pipeline-runs/{id}/retry"),
            &token,
            json!({}),
        )
        .await
        .expect(202);
    assert_eq!(retried["retry_of"], first["id"]);
    assert_eq!(retried["params"], json!({"SEED": "7"}));
    assert_eq!(run_id(&retried, "prep"), prep, "prep is reused");
    assert_eq!(run_id(&retried, "a"), a, "a is reused");
    assert_eq!(step(&retried, "a")["reused_from"], first["id"]);
    let b2 = run_id(&retried, "b");
    assert_ne!(b2, b, "b runs again");
    assert_eq!(status_of(&app, b2).await, RunStatus::Queued);
    complete(&app, b2, 0).await;
    let retried = read(&app, &token, &retried).await;
    let report = run_id(&retried, "report");
    complete(&app, report, 0).await;
    assert_eq!(read(&app, &token, &retried).await["status"], "succeeded");
    // A running pipeline run cannot be retried.
    let running = start(&app, &token, &pipeline, json!({})).await;
    let running_id = running["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/pipeline-runs/{running_id}/retry"),
        &token,
        json!({}),
    )
    .await
    .problem(409);
}

#[tokio::test]
async fn an_approval_gate_waits_without_a_run_and_resumes_on_approval() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let mut body = three_stages(&task);
    body["stages"][1]["approval"] = json!(true);
    let pipeline = create(&app, &token, body).await;
    let run = start(&app, &token, &pipeline, json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    // Approving a stage that is not waiting is refused.
    let (teacher_id, teacher) = app.user("teacher").await;
    app.post(
        &format!("/api/v1/pipeline-runs/{id}/stages/train/approve"),
        &teacher,
        json!({}),
    )
    .await
    .problem(409);
    complete(&app, run_id(&run, "prep"), 0).await;
    let run = read(&app, &token, &run).await;
    assert_eq!(run["status"], "awaiting_approval");
    assert_eq!(stage_statuses(&run)[1], "awaiting_approval");
    // Waiting holds nothing: no run exists for the gated stage, so no permit can be held.
    assert!(step(&run, "a")["run_id"].is_null());
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE status IN ('queued','dispatched','pending','running')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(active, 0);
    // The owner (a student) may not approve; a stranger does not see it.
    app.post(
        &format!("/api/v1/pipeline-runs/{id}/stages/train/approve"),
        &token,
        json!({}),
    )
    .await
    .problem(403);
    let (_, stranger) = app.user("student").await;
    app.post(
        &format!("/api/v1/pipeline-runs/{id}/stages/2/approve"),
        &stranger,
        json!({}),
    )
    .await
    .problem(404);
    let approved = app
        .post(
            &format!("/api/v1/pipeline-runs/{id}/stages/2/approve"),
            &teacher,
            json!({"comment": "fine, go ahead"}),
        )
        .await
        .expect(200);
    assert_eq!(approved["status"], "running");
    let decision = &approved["stages"][1]["decision"];
    assert_eq!(decision["decision"], "approved");
    assert_eq!(decision["decided_by"], teacher_id);
    assert_eq!(decision["comment"], "fine, go ahead");
    assert!(decision["decided_at"].is_string());
    assert_eq!(
        status_of(&app, run_id(&approved, "a")).await,
        RunStatus::Queued
    );
    // Deciding twice is refused.
    app.post(
        &format!("/api/v1/pipeline-runs/{id}/stages/2/reject"),
        &teacher,
        json!({}),
    )
    .await
    .problem(409);
}

#[tokio::test]
async fn a_rejected_stage_fails_the_pipeline_run() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let mut body = three_stages(&task);
    body["stages"][0]["approval"] = json!(true);
    let pipeline = create(&app, &token, body).await;
    let run = start(&app, &token, &pipeline, json!({})).await;
    assert_eq!(run["status"], "awaiting_approval");
    let id = run["id"].as_str().unwrap();
    let admin = app.admin().await;
    let rejected = app
        .post(
            &format!("/api/v1/pipeline-runs/{id}/stages/prepare/reject"),
            &admin,
            json!({"comment": "too big"}),
        )
        .await
        .expect(200);
    assert_eq!(rejected["status"], "failed");
    assert!(rejected["reason"].as_str().unwrap().contains("rejected"));
    assert_eq!(rejected["stages"][0]["decision"]["decision"], "rejected");
    assert_eq!(step(&rejected, "prep")["status"], "canceled");
}

#[tokio::test]
async fn run_values_may_set_only_declared_parameters() {
    let app = spawn_app().await;
    let (token, task) = setup(&app).await;
    let pipeline = create(&app, &token, three_stages(&task)).await;
    let before = app.snapshot().await;
    let id = pipeline["id"].as_str().unwrap();
    let problem = app
        .post(
            &format!("/api/v1/pipelines/{id}/runs"),
            &token,
            json!({"params": {"UNKNOWN": "1"}}),
        )
        .await
        .problem(422);
    assert!(problem["detail"].as_str().unwrap().contains("UNKNOWN"));
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn pipeline_status_changes_and_approval_requests_are_status_callbacks() {
    let app = spawn_app_with(vec![("webhooks.allow_loopback", "true".into())]).await;
    let (token, task) = setup(&app).await;
    let (_, teacher) = app.user("teacher").await;
    let hook = |events: Value| json!({"url": "http://127.0.0.1:9/hook", "events": events});
    app.post(
        "/api/v1/webhooks",
        &token,
        hook(json!(["pipeline_run.status", "approval.requested"])),
    )
    .await
    .expect(201);
    // A teacher hears approval requests of everyone's pipeline runs, not their status.
    app.post(
        "/api/v1/webhooks",
        &teacher,
        hook(json!(["approval.requested"])),
    )
    .await
    .expect(201);
    let mut body = three_stages(&task);
    body["stages"][1]["approval"] = json!(true);
    let pipeline = create(&app, &token, body).await;
    let run = start(&app, &token, &pipeline, json!({})).await;
    complete(&app, run_id(&run, "prep"), 0).await;
    assert_eq!(
        read(&app, &token, &run).await["status"],
        "awaiting_approval"
    );

    let id: Uuid = run["id"].as_str().unwrap().parse().unwrap();
    let events: Vec<(String, Uuid, i64, sqlx::types::Json<Value>)> = sqlx::query_as(
        "SELECT type, owner_id, sequence, data FROM webhook_events WHERE subject = $1
         ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.0 == "pipeline_run.status")
        .map(|e| e.3["pipeline_run"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["queued", "running", "awaiting_approval"],
        "{events:?}"
    );
    let requests: Vec<&(String, Uuid, i64, sqlx::types::Json<Value>)> = events
        .iter()
        .filter(|e| e.0 == "approval.requested")
        .collect();
    assert_eq!(
        requests.len(),
        2,
        "the owner's and the teacher's: {events:?}"
    );
    assert!(requests.iter().all(|e| e.3["stage"] == "train"));
    assert_ne!(requests[0].1, requests[1].1);
    // Every event has one delivery, to the endpoint of the user it was recorded for.
    let deliveries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
         JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.owner_id = e.owner_id
         WHERE e.subject = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(deliveries, events.len() as i64);
}
