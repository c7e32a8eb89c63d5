//! The run routes against real Postgres, Redis and S3, with no worker: later phases are driven
//! with the shared functions a worker uses (`runs::transition`, `runs::finish`,
//! `LiveLog::append`, `Storage::put`, `runs::record_outputs`).

use std::time::Duration;

use bytes::Bytes;
use coderun_shared::objects::RunObjects;
use coderun_shared::runs::{self, Change, OutputFile, Reason, RunStatus};
use coderun_shared::{bundle, logfile};
use coderun_tests::app::{Payload, TestApp, spawn_app, spawn_app_with};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

pub(crate) fn id_of(value: &Value) -> Uuid {
    value["id"].as_str().unwrap().parse().unwrap()
}

fn phases(run: &Value) -> Vec<String> {
    run["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["phase"].as_str().unwrap().to_owned())
        .collect()
}

/// Moves the run through `to`, as a worker observing it would.
pub(crate) async fn advance(app: &TestApp, run_id: Uuid, to: &[RunStatus]) {
    for phase in to {
        let moved = runs::transition(&app.db, run_id, *phase, &Change::by("worker:test"))
            .await
            .unwrap();
        assert!(moved, "{run_id} did not move to {phase:?}");
    }
}

/// Runs a queued run to its end with `exit_code`, as a worker would.
pub(crate) async fn complete(app: &TestApp, run_id: Uuid, exit_code: i32) -> RunStatus {
    advance(
        app,
        run_id,
        &[
            RunStatus::Dispatched,
            RunStatus::Pending,
            RunStatus::Running,
        ],
    )
    .await;
    end(app, run_id, exit_code).await
}

/// Records the end of a launched run's program with `exit_code`.
pub(crate) async fn end(app: &TestApp, run_id: Uuid, exit_code: i32) -> RunStatus {
    let to = if exit_code == 0 {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    let change = Change {
        exit_code: Some(exit_code),
        ..Change::by("worker:test")
    };
    runs::finish(&app.db, run_id, to, &change)
        .await
        .unwrap()
        .unwrap()
        .status
}

/// Stores `text` as the run's `log.txt` with its line index, as the worker does.
pub(crate) async fn store_log(app: &TestApp, run_id: Uuid, text: &str) {
    logfile::store(&app.state.storage, run_id, Bytes::from(text.to_owned()))
        .await
        .unwrap();
}

async fn put_dataset(app: &TestApp, name: &str) {
    app.publish_dataset(name, &[("data.csv", b"a,b\n1,2\n")])
        .await;
}

/// A student with a python task; returns (token, task id).
pub(crate) async fn student_with_task(app: &TestApp) -> (String, String) {
    let (_, token) = app.user("student").await;
    let task = app.task(&token, "Lab", "python").await;
    (token, task["id"].as_str().unwrap().to_owned())
}

/// The python language's default command for `main.py`, as configured.
fn default_command(app: &TestApp) -> String {
    app.state.settings.languages["python"].command_for("main.py")
}

pub(crate) fn runs_uri(task_id: &str) -> String {
    format!("/api/v1/tasks/{task_id}/runs")
}

/// Parses a `text/event-stream` body into (event, id, data) triples; data fields are joined
/// with `\n` as EventSource does.
pub(crate) fn parse_sse(body: &str) -> Vec<(String, Option<String>, String)> {
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let mut event = String::from("message");
        let mut id = None;
        let mut data: Vec<&str> = Vec::new();
        let mut any = false;
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_owned(),
                "id" => id = Some(value.to_owned()),
                "data" => {
                    data.push(value);
                    any = true;
                }
                _ => {}
            }
        }
        if any {
            events.push((event, id, data.join("\n")));
        }
    }
    events
}

#[tokio::test]
async fn submitting_snapshots_the_files_commits_the_run_and_queues_it_once() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    app.put_text(
        &format!("/api/v1/tasks/{task_id}/files/lib/util.py"),
        &token,
        "X = 1\n",
    )
    .await
    .expect(201);

    let response = app
        .post(
            &runs_uri(&task_id),
            &token,
            json!({"remarks": "first try", "spec": "medium"}),
        )
        .await;
    let run = response.expect(202);
    let run_id = id_of(&run);
    assert_eq!(
        response.header("location"),
        Some(format!("/api/v1/runs/{run_id}").as_str())
    );
    assert_eq!(run["status"], "queued");
    assert_eq!(run["task_id"], task_id.as_str());
    assert_eq!(run["command"], default_command(&app));
    assert_eq!(run["language"], "python");
    assert_eq!(run["image"], "coderun/run-python:bookworm");
    assert_eq!(run["spec"]["name"], "medium");
    assert_eq!(run["spec"]["cpu_millis"], 1000);
    assert_eq!(run["spec"]["wall_seconds"], 120);
    assert_eq!(run["remarks"], "first try");
    assert_eq!(run["datasets"], json!([]));
    assert_eq!(run["snapshot_of"], run_id.to_string());
    assert_eq!(run["retry_of"], Value::Null);
    assert_eq!(run["reason"], Value::Null);
    assert_eq!(run["exit_code"], Value::Null);
    assert_eq!(phases(&run), ["queued"]);
    assert_eq!(run["events"][0]["source"], "api");

    // The snapshot: one object named by the bundle's hash, which the row records; nothing is
    // stored file by file.
    let sha = run["code_sha256"].as_str().unwrap();
    let snapshot_key = format!("snapshots/{sha}.tar.gz");
    assert_eq!(app.objects("").await, [snapshot_key.clone()]);
    let tarball = app.state.storage.get(&snapshot_key).await.unwrap();
    assert_eq!(bundle::sha256_hex(&tarball), sha);
    let dir = std::env::temp_dir().join(format!("coderun-test-{run_id}"));
    let written = bundle::extract(&tarball, sha, &dir, 1 << 20).unwrap();
    assert_eq!(written, ["README.md", "lib/util.py", "main.py"]);
    for path in &written {
        let in_task = app
            .get(&format!("/api/v1/tasks/{task_id}/files/{path}"), &token)
            .await
            .text();
        assert_eq!(std::fs::read_to_string(dir.join(path)).unwrap(), in_task);
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // Exactly one stream entry, naming the run.
    let entries = app.stream_entries().await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1["run_id"], run_id.to_string());
    assert_eq!(app.stream_len().await, 1);

    // Later edits never reach the snapshot.
    app.put_text(
        &format!("/api/v1/tasks/{task_id}/files/main.py"),
        &token,
        "print('changed')\n",
    )
    .await
    .expect(200);
    let again = app.state.storage.get(&snapshot_key).await.unwrap();
    assert_eq!(again, tarball);
    let fetched = app
        .get(&format!("/api/v1/runs/{run_id}"), &token)
        .await
        .expect(200);
    assert_eq!(fetched["code_sha256"], sha);
}

#[tokio::test]
async fn the_command_comes_from_the_submission_then_the_task_then_the_language() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "Commands", "python").await;
    let task_id = task["id"].as_str().unwrap();

    // No body at all: every default.
    let response = app
        .send(
            Method::POST,
            &runs_uri(task_id),
            Some(&token),
            Payload::Empty,
        )
        .await;
    let run = response.expect(202);
    assert_eq!(run["command"], default_command(&app));
    assert_eq!(run["spec"]["name"], "small");
    complete(&app, id_of(&run), 0).await;

    app.patch(
        &format!("/api/v1/tasks/{task_id}"),
        &token,
        json!({"command": "python3 -u main.py --fast"}),
    )
    .await
    .expect(200);
    let run = app.submit(&token, task_id, json!({})).await;
    assert_eq!(run["command"], "python3 -u main.py --fast");
    complete(&app, id_of(&run), 0).await;

    let run = app
        .submit(
            &token,
            task_id,
            json!({"command": "echo hi && python3 main.py"}),
        )
        .await;
    assert_eq!(run["command"], "echo hi && python3 main.py");
}

#[tokio::test]
async fn a_second_submission_while_a_run_is_active_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let first = app.submit(&token, &task_id, json!({})).await;
    for phase in [
        None,
        Some(RunStatus::Dispatched),
        Some(RunStatus::Running),
        Some(RunStatus::Stopping),
    ] {
        if let Some(phase) = phase {
            advance(&app, id_of(&first), &[phase]).await;
        }
        let before = app.stored().await;
        let problem = app
            .post(&runs_uri(&task_id), &token, json!({}))
            .await
            .problem(409);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("already has an active run")
        );
        assert_eq!(app.stored().await, before);
    }
    assert_eq!(app.stream_len().await, 1);
    // Once it has ended, the task takes a new run.
    advance(&app, id_of(&first), &[RunStatus::Stopped]).await;
    app.submit(&token, &task_id, json!({})).await;
}

#[tokio::test]
async fn the_cap_on_active_runs_per_user_answers_429_with_retry_after() {
    let app = spawn_app_with(vec![("runs.max_active_per_user", "2".into())]).await;
    let (_, token) = app.user("student").await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let task = app.task(&token, &format!("t{i}"), "python").await;
        tasks.push(task["id"].as_str().unwrap().to_owned());
    }
    let first = app.submit(&token, &tasks[0], json!({})).await;
    app.submit(&token, &tasks[1], json!({})).await;
    let before = app.stored().await;
    let response = app.post(&runs_uri(&tasks[2]), &token, json!({})).await;
    let problem = response.problem(429);
    assert!(problem["detail"].as_str().unwrap().contains("2 runs"));
    let retry_after: u64 = response.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after > 0);
    assert_eq!(app.stored().await, before);

    // Another user has their own allowance; a finished run frees a place.
    let (_, other) = app.user("student").await;
    let theirs = app.task(&other, "theirs", "python").await;
    app.submit(&other, theirs["id"].as_str().unwrap(), json!({}))
        .await;
    complete(&app, id_of(&first), 1).await;
    app.submit(&token, &tasks[2], json!({})).await;
}

#[tokio::test]
async fn every_bad_submission_is_a_problem_and_stores_or_queues_nothing() {
    let app = spawn_app().await;
    put_dataset(&app, "iris").await;
    put_dataset(&app, "mnist").await;
    let (token, task_id) = student_with_task(&app).await;
    let uri = runs_uri(&task_id);
    let before = app.stored().await;
    let too_many: Vec<String> = (0..9).map(|i| format!("d{i}")).collect();
    for (body, needle) in [
        (json!({"command": ""}), "command"),
        (json!({"command": "   "}), "command"),
        (json!({"command": "x".repeat(4097)}), "command"),
        (json!({"command": "echo \u{0}"}), "NUL"),
        (json!({"spec": "huge"}), "known specs: large, medium, small"),
        (
            json!({"datasets": ["nope"]}),
            "published datasets: iris, mnist",
        ),
        (json!({"datasets": ["iris@v2"]}), "its versions: v1"),
        (json!({"datasets": ["Iris"]}), "dataset name"),
        (json!({"datasets": ["iris", "iris@v1"]}), "named twice"),
        (json!({"datasets": ["iris", "iris"]}), "named twice"),
        (json!({"datasets": too_many}), "at most 8"),
        (json!({"remarks": "r".repeat(2001)}), "2000"),
        (json!({"remarks": "a\u{0}b"}), "NUL"),
    ] {
        let problem = app.post(&uri, &token, body.clone()).await.problem(400);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{body}: {detail}");
    }
    for body in [
        json!({"command": 5}),
        json!({"datasets": "iris"}),
        json!({"datasets": [1]}),
        json!({"remarks": ["x"]}),
        json!({"spec": "small", "priority": 1}),
        json!([]),
    ] {
        app.post(&uri, &token, body).await.problem(422);
    }
    app.send(
        Method::POST,
        &uri,
        Some(&token),
        Payload::Raw(b"{\"spec\": ".to_vec(), "application/json"),
    )
    .await
    .problem(400);
    app.send(
        Method::POST,
        &uri,
        Some(&token),
        Payload::Raw(b"spec=small".to_vec(), "application/x-www-form-urlencoded"),
    )
    .await
    .problem(415);
    app.send(Method::POST, &uri, None, Payload::Json(json!({})))
        .await
        .problem(401);
    // Someone else's task does not exist for a student, and is read-only for a teacher.
    let (_, stranger) = app.user("student").await;
    app.post(&uri, &stranger, json!({})).await.problem(404);
    let (_, teacher) = app.user("teacher").await;
    app.post(&uri, &teacher, json!({})).await.problem(403);
    app.post(&runs_uri(&Uuid::new_v4().to_string()), &token, json!({}))
        .await
        .problem(404);
    app.post("/api/v1/tasks/not-a-uuid/runs", &token, json!({}))
        .await
        .problem(404);

    let after = app.stored().await;
    // Creating the two users is the only change, and it is not the runs'.
    assert_eq!(after["stream"], before["stream"]);
    assert_eq!(after["objects"], before["objects"]);
    assert_eq!(after["db"]["runs"], json!([]));
    assert_eq!(after["db"]["run_events"], json!([]));
    assert_eq!(after["db"]["files"], before["db"]["files"]);
    assert_eq!(app.stream_len().await, 0);
    assert!(app.objects("runs/").await.is_empty());

    // The same task takes a valid submission with datasets.
    let run = app
        .submit(&token, &task_id, json!({"datasets": ["mnist", "iris"]}))
        .await;
    // The run records the exact versions it got.
    assert_eq!(run["datasets"], json!(["mnist@v1", "iris@v1"]));
}

#[tokio::test]
async fn stopping_a_queued_run_cancels_it_for_good() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let run_id = id_of(&run);
    let stop = format!("/api/v1/runs/{run_id}/stop");
    let stopped = app.post(&stop, &token, json!({})).await.expect(200);
    assert_eq!(stopped["status"], "canceled");
    assert_eq!(stopped["reason"], "stopped_by_user");
    assert!(stopped["finished_at"].is_string());
    assert_eq!(phases(&stopped), ["queued", "canceled"]);

    // A worker that picks the entry up later cannot launch it.
    for phase in [
        RunStatus::Dispatched,
        RunStatus::Pending,
        RunStatus::Running,
    ] {
        let moved = runs::transition(&app.db, run_id, phase, &Change::by("worker:late"))
            .await
            .unwrap();
        assert!(!moved, "a canceled run moved to {phase:?}");
    }
    // Stopping again changes nothing.
    let again = app.post(&stop, &token, json!({})).await.expect(200);
    assert_eq!(again["status"], "canceled");
    assert_eq!(phases(&again), ["queued", "canceled"]);
    let fetched = app
        .get(&format!("/api/v1/runs/{run_id}"), &token)
        .await
        .expect(200);
    assert_eq!(fetched["status"], "canceled");
}

#[tokio::test]
async fn stopping_a_running_run_moves_it_to_stopping_and_tells_the_workers() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let run_id = id_of(&run);
    advance(
        &app,
        run_id,
        &[
            RunStatus::Dispatched,
            RunStatus::Pending,
            RunStatus::Running,
        ],
    )
    .await;

    // A worker listening on the stops channel, on a connection of its own.
    let listener = coderun_shared::redis::connect(&app.state.settings.redis)
        .await
        .unwrap();
    let mut messages = listener.message_rx();
    listener.subscribe(app.state.keys.stops()).await.unwrap();

    let stop = format!("/api/v1/runs/{run_id}/stop");
    let stopping = app.post(&stop, &token, json!({})).await.expect(200);
    assert_eq!(stopping["status"], "stopping");
    assert_eq!(stopping["reason"], "stopped_by_user");
    let message = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .expect("a stop message within 5 s")
        .unwrap();
    assert_eq!(message.channel.to_string(), app.state.keys.stops());
    assert_eq!(message.value.as_string().unwrap(), run_id.to_string());

    // Idempotent: stopping a stopping run changes nothing.
    let again = app.post(&stop, &token, json!({})).await.expect(200);
    assert_eq!(again["status"], "stopping");
    assert_eq!(phases(&again), phases(&stopping));

    // The program exiting meanwhile does not beat the stop.
    let ended = runs::finish(
        &app.db,
        run_id,
        RunStatus::Succeeded,
        &Change::by("worker:test"),
    )
    .await
    .unwrap();
    assert_eq!(ended.map(|e| e.status), Some(RunStatus::Stopped));
    let done = app.post(&stop, &token, json!({})).await.expect(200);
    assert_eq!(done["status"], "stopped");
    assert_eq!(done["reason"], Reason::StoppedByUser.as_str());
    assert_eq!(
        phases(&done),
        [
            "queued",
            "dispatched",
            "pending",
            "running",
            "stopping",
            "stopped"
        ]
    );
    listener.quit().await.ok();
}

#[tokio::test]
async fn only_finished_runs_can_be_retried_and_a_retry_reuses_the_snapshot() {
    let app = spawn_app().await;
    put_dataset(&app, "iris").await;
    let (token, task_id) = student_with_task(&app).await;
    let original = app
        .submit(
            &token,
            &task_id,
            json!({"command": "python3 main.py 42", "spec": "large", "datasets": ["iris"], "remarks": "again"}),
        )
        .await;
    let original_id = id_of(&original);
    let retry = format!("/api/v1/runs/{original_id}/retry");

    let before = app.stored().await;
    let problem = app.post(&retry, &token, json!({})).await.problem(409);
    assert!(problem["detail"].as_str().unwrap().contains("finished"));
    advance(&app, original_id, &[RunStatus::Dispatched]).await;
    app.post(&retry, &token, json!({})).await.problem(409);
    assert_eq!(
        app.stored().await["stream"],
        before["stream"],
        "a refused retry queues nothing"
    );

    end(&app, original_id, 3).await;
    // The task changes after the run: the retry still runs the old snapshot.
    app.put_text(
        &format!("/api/v1/tasks/{task_id}/files/main.py"),
        &token,
        "print('new')\n",
    )
    .await
    .expect(200);
    let objects_before = app.objects("").await;
    let response = app.post(&retry, &token, json!({})).await;
    let retried = response.expect(202);
    let retried_id = id_of(&retried);
    assert_eq!(
        response.header("location"),
        Some(format!("/api/v1/runs/{retried_id}").as_str())
    );
    assert_ne!(retried_id, original_id);
    assert_eq!(retried["status"], "queued");
    assert_eq!(retried["retry_of"], original_id.to_string());
    assert_eq!(retried["snapshot_of"], original_id.to_string());
    for field in [
        "code_sha256",
        "command",
        "spec",
        "datasets",
        "remarks",
        "image",
        "language",
        "task_id",
    ] {
        assert_eq!(retried[field], original[field], "{field}");
    }
    assert!(
        retried["events"][0]["detail"]
            .as_str()
            .unwrap()
            .contains(&original_id.to_string())
    );
    assert_eq!(
        app.objects("").await,
        objects_before,
        "a retry uploads nothing"
    );
    let entries = app.stream_entries().await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].1["run_id"], retried_id.to_string());

    // While the retry is active, neither run can be retried again.
    app.post(&retry, &token, json!({})).await.problem(409);
    app.post(
        &format!("/api/v1/runs/{retried_id}/retry"),
        &token,
        json!({}),
    )
    .await
    .problem(409);
    // A retry of a retry keeps pointing at the first snapshot.
    complete(&app, retried_id, 0).await;
    let third = app
        .post(
            &format!("/api/v1/runs/{retried_id}/retry"),
            &token,
            json!({}),
        )
        .await
        .expect(202);
    assert_eq!(third["snapshot_of"], original_id.to_string());
    assert_eq!(third["retry_of"], retried_id.to_string());
}

#[tokio::test]
async fn the_run_list_pages_newest_first_and_filters_by_status() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = app.submit(&token, &task_id, json!({})).await;
        ids.push(id_of(&run));
        app.post(
            &format!("/api/v1/runs/{}/stop", ids.last().unwrap()),
            &token,
            json!({}),
        )
        .await
        .expect(200);
    }
    let run = app.submit(&token, &task_id, json!({})).await;
    ids.push(id_of(&run));
    let uri = runs_uri(&task_id);

    let page = app
        .get(&format!("{uri}?per_page=3"), &token)
        .await
        .expect(200);
    assert_eq!(page["total"], 4);
    assert_eq!(page["page"], 1);
    assert_eq!(page["per_page"], 3);
    let listed: Vec<Uuid> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(listed, [ids[3], ids[2], ids[1]]);
    assert!(page["items"][0].get("events").is_none());
    let second = app
        .get(&format!("{uri}?per_page=3&page=2"), &token)
        .await
        .expect(200);
    let listed: Vec<Uuid> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(listed, [ids[0]]);

    let canceled = app
        .get(&format!("{uri}?status=canceled"), &token)
        .await
        .expect(200);
    assert_eq!(canceled["total"], 3);
    let queued = app
        .get(&format!("{uri}?status=queued"), &token)
        .await
        .expect(200);
    assert_eq!(queued["total"], 1);
    assert_eq!(queued["items"][0]["id"], ids[3].to_string());
    let none = app
        .get(&format!("{uri}?status=running"), &token)
        .await
        .expect(200);
    assert_eq!(none["total"], 0);

    let problem = app
        .get(&format!("{uri}?status=done"), &token)
        .await
        .problem(400);
    assert!(problem["detail"].as_str().unwrap().contains("queued"));
    app.get(&format!("{uri}?page=0"), &token).await.problem(400);
    app.get(&format!("{uri}?per_page=1000"), &token)
        .await
        .problem(400);
    app.get(&format!("{uri}?page=x"), &token).await.problem(400);
}

#[tokio::test]
async fn the_detail_shows_every_phase_in_order_with_its_source() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let run_id = id_of(&run);
    assert_eq!(complete(&app, run_id, 0).await, RunStatus::Succeeded);
    let detail = app
        .get(&format!("/api/v1/runs/{run_id}"), &token)
        .await
        .expect(200);
    assert_eq!(detail["status"], "succeeded");
    assert_eq!(detail["exit_code"], 0);
    assert_eq!(detail["reason"], Value::Null);
    for field in [
        "created_at",
        "queued_at",
        "dispatched_at",
        "started_at",
        "finished_at",
    ] {
        assert!(detail[field].is_string(), "{field}");
    }
    assert_eq!(
        phases(&detail),
        ["queued", "dispatched", "pending", "running", "succeeded"]
    );
    let events = detail["events"].as_array().unwrap();
    assert_eq!(events[0]["source"], "api");
    assert_eq!(events[0]["detail"], "submitted");
    assert!(events[1..].iter().all(|e| e["source"] == "worker:test"));
    assert!(events.iter().all(|e| e["at"].is_string()));
}

#[tokio::test]
async fn the_paged_log_is_live_while_running_and_stored_once_finished() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let run_id = id_of(&run);
    let log = format!("/api/v1/runs/{run_id}/log");

    // Nothing written yet: one empty page.
    let empty = app.get(&log, &token).await.expect(200);
    assert_eq!(
        empty,
        json!({"page": 1, "total_pages": 1, "total_lines": 0, "lines": [], "complete": false})
    );

    advance(
        &app,
        run_id,
        &[
            RunStatus::Dispatched,
            RunStatus::Pending,
            RunStatus::Running,
        ],
    )
    .await;
    let lines: Vec<String> = (1..=250).map(|i| format!("live {i}")).collect();
    app.state.live_log.append(run_id, 1, &lines).await.unwrap();

    let first = app.get(&log, &token).await.expect(200);
    assert_eq!(first["page"], 1);
    assert_eq!(first["total_pages"], 3);
    assert_eq!(first["total_lines"], 250);
    assert_eq!(first["complete"], false);
    let got: Vec<&str> = first["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(got.len(), 100);
    assert_eq!((got[0], got[99]), ("live 1", "live 100"));
    let third = app.get(&format!("{log}?page=3"), &token).await.expect(200);
    assert_eq!(third["lines"].as_array().unwrap().len(), 50);
    assert_eq!(third["lines"][49], "live 250");
    let beyond = app.get(&format!("{log}?page=4"), &token).await.expect(200);
    assert_eq!(beyond["lines"], json!([]));
    assert_eq!(beyond["total_pages"], 3);
    let far = app
        .get(&format!("{log}?page={}", i64::MAX), &token)
        .await
        .expect(200);
    assert_eq!(far["lines"], json!([]));
    app.get(&format!("{log}?page=0"), &token).await.problem(400);
    app.get(&format!("{log}?page=-1"), &token)
        .await
        .problem(400);
    app.get(&format!("{log}?page=x"), &token).await.problem(400);

    // The run ends and its log is stored: pages come from log.txt, and are complete.
    let mut text: String = (1..=120).map(|i| format!("stored {i}\n")).collect();
    text.push_str("last line without newline");
    store_log(&app, run_id, &text).await;
    end(&app, run_id, 0).await;
    let first = app.get(&log, &token).await.expect(200);
    assert_eq!(first["total_pages"], 2);
    assert_eq!(first["total_lines"], 121);
    assert_eq!(first["complete"], true);
    assert_eq!(first["lines"][0], "stored 1");
    let second = app.get(&format!("{log}?page=2"), &token).await.expect(200);
    assert_eq!(second["lines"].as_array().unwrap().len(), 21);
    assert_eq!(second["lines"][20], "last line without newline");

    // A run canceled before it launched has no log, and that is its complete log.
    let run = app.submit(&token, &task_id, json!({})).await;
    let canceled = id_of(&run);
    app.post(&format!("/api/v1/runs/{canceled}/stop"), &token, json!({}))
        .await
        .expect(200);
    let page = app
        .get(&format!("/api/v1/runs/{canceled}/log"), &token)
        .await
        .expect(200);
    assert_eq!(
        page,
        json!({"page": 1, "total_pages": 1, "total_lines": 0, "lines": [], "complete": true})
    );
}

#[tokio::test]
async fn a_finished_runs_log_stream_sends_its_lines_then_the_end_and_closes() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let run_id = id_of(&run);
    complete(&app, run_id, 0).await;
    store_log(&app, run_id, "first\n\nthird\r\n  indented\n").await;
    let uri = format!("/api/v1/runs/{run_id}/log/stream");

    let response = tokio::time::timeout(Duration::from_secs(10), app.get(&uri, &token))
        .await
        .expect("the stream of a finished run ends by itself");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let events = parse_sse(&response.text());
    let expected: Vec<(String, Option<String>, String)> = vec![
        ("line".into(), Some("1".into()), "first".into()),
        ("line".into(), Some("2".into()), "".into()),
        ("line".into(), Some("3".into()), "third".into()),
        ("line".into(), Some("4".into()), "  indented".into()),
    ];
    assert_eq!(events[..4], expected[..]);
    assert_eq!(events.len(), 5);
    let (kind, _, data) = &events[4];
    assert_eq!(kind, "end");
    let end: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        end,
        json!({"status": "succeeded", "reason": null, "exit_code": 0})
    );

    // Reconnecting after line 2 resumes at line 3.
    let resumed = tokio::time::timeout(
        Duration::from_secs(10),
        app.send_with(
            Method::GET,
            &uri,
            Some(&token),
            &[("last-event-id", "2")],
            Payload::Empty,
        ),
    )
    .await
    .unwrap();
    let events = parse_sse(&resumed.text());
    let ids: Vec<Option<String>> = events.iter().map(|e| e.1.clone()).collect();
    assert_eq!(ids, [Some("3".into()), Some("4".into()), None]);
    let past_the_end = app
        .send_with(
            Method::GET,
            &uri,
            Some(&token),
            &[("last-event-id", &u64::MAX.to_string())],
            Payload::Empty,
        )
        .await;
    let events = parse_sse(&past_the_end.text());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "end");

    // A canceled run that never ran: just the end.
    let run = app.submit(&token, &task_id, json!({})).await;
    let canceled = id_of(&run);
    app.post(&format!("/api/v1/runs/{canceled}/stop"), &token, json!({}))
        .await
        .expect(200);
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        app.get(&format!("/api/v1/runs/{canceled}/log/stream"), &token),
    )
    .await
    .unwrap();
    let events = parse_sse(&response.text());
    assert_eq!(events.len(), 1);
    let end: Value = serde_json::from_str(&events[0].2).unwrap();
    assert_eq!(
        end,
        json!({"status": "canceled", "reason": "stopped_by_user", "exit_code": null})
    );
}

#[tokio::test]
async fn the_log_stream_follows_a_running_run_until_it_ends() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let run_id = id_of(&run);
    advance(
        &app,
        run_id,
        &[
            RunStatus::Dispatched,
            RunStatus::Pending,
            RunStatus::Running,
        ],
    )
    .await;
    app.state
        .live_log
        .append(run_id, 1, &["one".into(), "two".into()])
        .await
        .unwrap();
    let uri = format!("/api/v1/runs/{run_id}/log/stream");

    let worker = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        app.state
            .live_log
            .append(run_id, 3, &["three".into()])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        // The worker stores the whole log, then records the end.
        store_log(&app, run_id, "one\ntwo\nthree\nfour\n").await;
        let change = Change {
            exit_code: Some(2),
            ..Change::by("worker:test")
        };
        runs::finish(&app.db, run_id, RunStatus::Failed, &change)
            .await
            .unwrap();
    };
    let (response, ()) = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join(app.get(&uri, &token), worker),
    )
    .await
    .expect("the stream ends once the run has ended");
    let events = parse_sse(&response.text());
    let lines: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.0 == "line")
        .map(|e| (e.1.as_deref().unwrap(), e.2.as_str()))
        .collect();
    assert_eq!(
        lines,
        [("1", "one"), ("2", "two"), ("3", "three"), ("4", "four")]
    );
    let last = events.last().unwrap();
    assert_eq!(last.0, "end");
    let end: Value = serde_json::from_str(&last.2).unwrap();
    assert_eq!(
        end,
        json!({"status": "failed", "reason": null, "exit_code": 2})
    );
}

#[tokio::test]
async fn the_log_download_redirects_to_a_presigned_url_that_serves_the_log() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let run_id = id_of(&run);
    let uri = format!("/api/v1/runs/{run_id}/log/download");
    let problem = app.get(&uri, &token).await.problem(404);
    assert!(problem["detail"].as_str().unwrap().contains("live"));

    complete(&app, run_id, 0).await;
    let text = "hello\nfrom the log\n";
    store_log(&app, run_id, text).await;
    let response = app.get(&uri, &token).await;
    assert_eq!(response.status, 302);
    let location = response.header("location").unwrap();
    assert!(location.starts_with(&app.state.settings.storage.endpoint));
    assert!(location.contains("X-Amz-Signature"), "{location}");
    let downloaded = reqwest::get(location).await.unwrap();
    assert_eq!(downloaded.status(), 200);
    assert_eq!(downloaded.text().await.unwrap(), text);
}

#[tokio::test]
async fn outputs_are_listed_by_path_with_urls_that_download_them() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let run_id = id_of(&run);
    let uri = format!("/api/v1/runs/{run_id}/outputs");
    let empty = app.get(&uri, &token).await.expect(200);
    assert_eq!(empty["items"], json!([]));
    assert_eq!(empty["total"], 0);

    complete(&app, run_id, 0).await;
    let outputs = [
        ("result.txt", "42\n"),
        ("plots/a b.csv", "x,y\n1,2\n"),
        ("plots/b.csv", "z\n"),
    ];
    for (path, content) in outputs {
        app.state
            .storage
            .put(
                &RunObjects::new(run_id).output(path),
                Bytes::from(content.to_owned()),
                "application/octet-stream",
            )
            .await
            .unwrap();
    }
    let files: Vec<OutputFile> = outputs
        .iter()
        .map(|(path, content)| OutputFile {
            path: (*path).to_owned(),
            size: content.len() as i64,
        })
        .collect();
    runs::record_outputs(&app.db, run_id, &files).await.unwrap();

    let listed = app.get(&uri, &token).await.expect(200);
    assert_eq!(listed["total"], 3);
    let items = listed["items"].as_array().unwrap();
    let paths: Vec<&str> = items.iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["plots/a b.csv", "plots/b.csv", "result.txt"]);
    for item in items {
        let path = item["path"].as_str().unwrap();
        let (_, content) = outputs.iter().find(|(p, _)| *p == path).unwrap();
        assert_eq!(item["size"], content.len());
        let url = item["url"].as_str().unwrap();
        let downloaded = reqwest::get(url).await.unwrap();
        assert_eq!(downloaded.status(), 200, "{url}");
        assert_eq!(downloaded.text().await.unwrap(), *content);
    }
    let paged = app
        .get(&format!("{uri}?per_page=2&page=2"), &token)
        .await
        .expect(200);
    assert_eq!(paged["items"].as_array().unwrap().len(), 1);
    assert_eq!(paged["items"][0]["path"], "result.txt");
}

#[tokio::test]
async fn other_users_runs_are_invisible_and_teachers_may_only_read_them() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let run_id = id_of(&run);
    complete(&app, run_id, 0).await;
    store_log(&app, run_id, "secret\n").await;
    let reads = [
        format!("/api/v1/runs/{run_id}"),
        format!("/api/v1/runs/{run_id}/log"),
        format!("/api/v1/runs/{run_id}/log/stream"),
        format!("/api/v1/runs/{run_id}/outputs"),
        runs_uri(&task_id),
    ];
    let writes = [
        format!("/api/v1/runs/{run_id}/stop"),
        format!("/api/v1/runs/{run_id}/retry"),
    ];

    let (_, stranger) = app.user("student").await;
    let before = app.stored().await;
    for uri in &reads {
        app.get(uri, &stranger).await.problem(404);
    }
    app.get(&format!("/api/v1/runs/{run_id}/log/download"), &stranger)
        .await
        .problem(404);
    for uri in &writes {
        app.post(uri, &stranger, json!({})).await.problem(404);
    }

    let (_, teacher) = app.user("teacher").await;
    let admin = app.admin().await;
    for reader in [&teacher, &admin] {
        for uri in &reads {
            let response = tokio::time::timeout(Duration::from_secs(10), app.get(uri, reader))
                .await
                .unwrap();
            assert_eq!(response.status, 200, "{uri}");
        }
        let download = app
            .get(&format!("/api/v1/runs/{run_id}/log/download"), reader)
            .await;
        assert_eq!(download.status, 302);
        for uri in &writes {
            app.post(uri, reader, json!({})).await.problem(403);
        }
    }
    let after = app.stored().await;
    assert_eq!(after["db"]["runs"], before["db"]["runs"]);
    assert_eq!(after["stream"], before["stream"]);

    // Malformed and unknown ids name nothing.
    for uri in [
        "/api/v1/runs/not-a-uuid".to_owned(),
        "/api/v1/runs/1234/log".to_owned(),
        format!("/api/v1/runs/{}", Uuid::new_v4()),
        format!("/api/v1/runs/{}/outputs", Uuid::new_v4()),
    ] {
        app.get(&uri, &token).await.problem(404);
    }
    app.post("/api/v1/runs/not-a-uuid/stop", &token, json!({}))
        .await
        .problem(404);
    app.send(
        Method::GET,
        &format!("/api/v1/runs/{run_id}"),
        None,
        Payload::Empty,
    )
    .await
    .problem(401);
}

#[tokio::test]
async fn a_task_with_an_active_run_cannot_be_deleted() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app.submit(&token, &task_id, json!({})).await;
    let task_uri = format!("/api/v1/tasks/{task_id}");
    let before = app.stored().await;
    let problem = app.delete(&task_uri, &token).await.problem(409);
    assert!(problem["detail"].as_str().unwrap().contains("active run"));
    assert_eq!(app.stored().await, before);
    app.post(
        &format!("/api/v1/runs/{}/stop", id_of(&run)),
        &token,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(app.delete(&task_uri, &token).await.status, 204);
    app.get(&format!("/api/v1/runs/{}", id_of(&run)), &token)
        .await
        .problem(404);
}
