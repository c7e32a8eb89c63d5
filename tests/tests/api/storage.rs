//! Storage that stays bounded, tried as an abuser would on the real servers: snapshots stored
//! once by content, the storage quota, the background sweep of deleted tasks' objects, the
//! retention, the caps on live log streams, paged logs that read only their page, and a flood of
//! empty lines in the live log.

use std::io::Read;

use axum::body::Body;
use bytes::Bytes;
use coderun_shared::config::RetentionSettings;
use coderun_shared::logfile;
use coderun_shared::objects::RunObjects;
use coderun_shared::runs::{self, OutputFile, RunStatus};
use coderun_shared::sweep;
use coderun_tests::app::{TestApp, spawn_app, spawn_app_with};
use fred::interfaces::ClientLike;
use http::{Request, header};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

use crate::runs::{complete, id_of, runs_uri, store_log, student_with_task};

fn retention(max_age_days: u32, keep_per_task: u32) -> RetentionSettings {
    RetentionSettings {
        max_age_days,
        keep_per_task,
        sweep_seconds: 1,
        snapshot_grace_seconds: 0,
    }
}

/// Submits and runs to its end a run of the task that wrote `log` and one output file.
async fn finished_run(app: &TestApp, token: &str, task_id: &str, log: &str) -> Uuid {
    let run_id = id_of(&app.submit(token, task_id, json!({})).await);
    complete(app, run_id, 0).await;
    store_log(app, run_id, log).await;
    let objects = RunObjects::new(run_id);
    app.state
        .storage
        .put(
            &objects.output("answer.txt"),
            Bytes::from_static(b"42\n"),
            "text/plain",
        )
        .await
        .unwrap();
    runs::record_outputs(
        &app.db,
        run_id,
        &[OutputFile {
            path: "answer.txt".into(),
            size: 3,
        }],
    )
    .await
    .unwrap();
    run_id
}

async fn snapshot_keys(app: &TestApp) -> Vec<String> {
    app.objects("snapshots/").await
}

#[tokio::test]
async fn resubmitting_unchanged_code_or_another_task_with_the_same_code_uploads_nothing() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let first = app.submit(&token, &task_id, json!({})).await;
    let sha = first["code_sha256"].as_str().unwrap().to_owned();
    let key = RunObjects::snapshot(&sha);
    assert_eq!(snapshot_keys(&app).await, [key.clone()]);
    assert!(
        app.objects("runs/").await.is_empty(),
        "no file is stored on its own"
    );
    complete(&app, id_of(&first), 0).await;

    // A marker in place of the snapshot: any upload of the same content would replace it.
    app.state
        .storage
        .put(&key, Bytes::from_static(b"marker"), "application/gzip")
        .await
        .unwrap();
    let again = app.submit(&token, &task_id, json!({})).await;
    assert_eq!(
        again["code_sha256"],
        sha.as_str(),
        "same files, same snapshot"
    );
    complete(&app, id_of(&again), 0).await;
    let other_task = app.task(&token, "Same code", "python").await;
    let other = app
        .submit(&token, other_task["id"].as_str().unwrap(), json!({}))
        .await;
    assert_eq!(other["code_sha256"], sha.as_str());
    assert_eq!(
        &app.state.storage.get(&key).await.unwrap()[..],
        b"marker",
        "nothing was uploaded again"
    );
    assert_eq!(snapshot_keys(&app).await, [key.clone()]);

    // Changed code is a new snapshot.
    app.put_text(
        &format!("/api/v1/tasks/{task_id}/files/main.py"),
        &token,
        "print('changed')\n",
    )
    .await
    .expect(200);
    let changed = app.submit(&token, &task_id, json!({})).await;
    assert_ne!(changed["code_sha256"], sha.as_str());
    assert_eq!(snapshot_keys(&app).await.len(), 2);
}

#[tokio::test]
async fn a_submit_over_the_storage_quota_is_refused_with_429_and_stores_nothing() {
    let app = spawn_app_with(vec![("runs.storage_quota_bytes", "4000".into())]).await;
    let (token, task_id) = student_with_task(&app).await;
    let run_id = id_of(&app.submit(&token, &task_id, json!({})).await);
    complete(&app, run_id, 0).await;
    // The run's log fills the quota.
    sqlx::query("UPDATE runs SET log_bytes = 3900 WHERE id = $1")
        .bind(run_id)
        .execute(&app.db)
        .await
        .unwrap();

    let before = app.stored().await;
    let response = app.post(&runs_uri(&task_id), &token, json!({})).await;
    let problem = response.problem(429);
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("storage quota"), "{detail}");
    assert!(detail.contains("4000"), "{detail}");
    assert!(response.header("retry-after").is_some());
    assert_eq!(app.stored().await, before, "a refusal stores nothing");

    // A task larger than the whole quota is refused before anything is built.
    let fresh = spawn_app_with(vec![("runs.storage_quota_bytes", "50".into())]).await;
    let (token, task_id) = student_with_task(&fresh).await;
    let before = fresh.stored().await;
    fresh
        .post(&runs_uri(&task_id), &token, json!({}))
        .await
        .problem(429);
    assert_eq!(fresh.stored().await, before);
}

#[tokio::test]
async fn deleting_a_task_sweeps_its_runs_objects_and_keeps_a_snapshot_another_task_uses() {
    let app = spawn_app().await;
    let (token, first_task) = student_with_task(&app).await;
    let second_task = app.task(&token, "Twin", "python").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone = finished_run(&app, &token, &first_task, "one\ntwo\n").await;
    let kept = finished_run(&app, &token, &second_task, "three\n").await;
    let snapshot = snapshot_keys(&app).await;
    assert_eq!(snapshot.len(), 1, "both tasks hold the same code");
    let gone_prefix = RunObjects::new(gone).prefix();
    assert_eq!(
        app.objects(&gone_prefix).await.len(),
        3,
        "log, index, output"
    );

    app.delete(&format!("/api/v1/tasks/{first_task}"), &token)
        .await
        .expect(204);
    // The request did not wait on the bucket; the deletion is recorded for the sweep.
    assert_eq!(app.objects(&gone_prefix).await.len(), 3);
    let recorded: Vec<Uuid> = sqlx::query_scalar("SELECT run_id FROM object_sweeps")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(recorded, [gone]);

    // A bucket that fails: the sweep keeps the record and tries again later.
    let mut broken = app.state.settings.storage.clone();
    broken.bucket = "no-such-bucket".into();
    let broken = coderun_shared::storage::Storage::new(&broken);
    let (removed, failed) = sweep::sweep_deleted_runs(&app.db, &broken).await.unwrap();
    assert_eq!((removed, failed), (0, 1));
    let (attempts, later): (i32, bool) =
        sqlx::query_as("SELECT attempts, not_before > now() FROM object_sweeps WHERE run_id = $1")
            .bind(gone)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((attempts, later), (1, true));
    assert_eq!(
        sweep::sweep_deleted_runs(&app.db, &app.state.storage)
            .await
            .unwrap(),
        (0, 0),
        "not due yet"
    );
    sqlx::query("UPDATE object_sweeps SET not_before = now()")
        .execute(&app.db)
        .await
        .unwrap();

    let swept = sweep::sweep_all(&app.db, &app.state.storage, &retention(0, 0))
        .await
        .unwrap();
    assert_eq!(swept.deleted_runs, 1);
    assert!(app.objects(&gone_prefix).await.is_empty());
    assert_eq!(
        snapshot_keys(&app).await,
        snapshot,
        "still used by the twin"
    );
    assert_eq!(
        app.objects(&RunObjects::new(kept).prefix()).await.len(),
        3,
        "the other task's run is untouched"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM object_sweeps")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(left, 0);

    // Once no run uses it, the snapshot goes too.
    app.delete(&format!("/api/v1/tasks/{second_task}"), &token)
        .await
        .expect(204);
    let swept = sweep::sweep_all(&app.db, &app.state.storage, &retention(0, 0))
        .await
        .unwrap();
    assert_eq!((swept.deleted_runs, swept.snapshots), (1, 1));
    assert!(
        app.objects("").await.is_empty(),
        "{:?}",
        app.objects("").await
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn the_retention_purges_old_runs_objects_and_keeps_their_rows_with_a_note() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let oldest = finished_run(&app, &token, &task_id, "old\n").await;
    let middle = finished_run(&app, &token, &task_id, "middle\n").await;
    let newest = finished_run(&app, &token, &task_id, "new\n").await;

    // Keep the newest two per task: the oldest loses its objects.
    let swept = sweep::sweep_all(&app.db, &app.state.storage, &retention(0, 2))
        .await
        .unwrap();
    assert_eq!(swept.purged_runs, 1);
    assert!(
        app.objects(&RunObjects::new(oldest).prefix())
            .await
            .is_empty()
    );
    for run in [middle, newest] {
        assert_eq!(app.objects(&RunObjects::new(run).prefix()).await.len(), 3);
    }
    let run = app
        .get(&format!("/api/v1/runs/{oldest}"), &token)
        .await
        .expect(200);
    assert!(run["purged_at"].is_string(), "{run}");
    assert_eq!(run["status"], "succeeded", "the row stays as the record");
    let page = app
        .get(&format!("/api/v1/runs/{oldest}/log"), &token)
        .await
        .expect(200);
    assert_eq!(page["lines"], json!([]));
    assert_eq!(page["complete"], true);
    let missing = app
        .get(&format!("/api/v1/runs/{oldest}/log/download"), &token)
        .await
        .problem(404);
    assert!(missing["detail"].as_str().unwrap().contains("retention"));
    let outputs = app
        .get(&format!("/api/v1/runs/{oldest}/outputs"), &token)
        .await
        .expect(200);
    assert_eq!(outputs["total"], 0);
    // The snapshot is still used by the two kept runs.
    assert_eq!(snapshot_keys(&app).await.len(), 1);
    app.post(&format!("/api/v1/runs/{oldest}/retry"), &token, json!({}))
        .await
        .expect(202);

    // By age: a run finished long ago goes, an active run never does.
    let (other_token, other_task) = student_with_task(&app).await;
    let aged = finished_run(&app, &other_token, &other_task, "aged\n").await;
    sqlx::query("UPDATE runs SET finished_at = now() - interval '10 days' WHERE id = $1")
        .bind(aged)
        .execute(&app.db)
        .await
        .unwrap();
    let active = id_of(&app.submit(&other_token, &other_task, json!({})).await);
    sqlx::query("UPDATE runs SET created_at = now() - interval '30 days' WHERE id = $1")
        .bind(active)
        .execute(&app.db)
        .await
        .unwrap();
    let purged = sweep::purge_expired_runs(&app.db, &app.state.storage, &retention(7, 0))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert!(
        app.objects(&RunObjects::new(aged).prefix())
            .await
            .is_empty()
    );
    let statuses: Vec<(Uuid, bool)> =
        sqlx::query_as("SELECT id, purged_at IS NOT NULL FROM runs WHERE id = ANY($1)")
            .bind(vec![aged, active, middle, newest])
            .fetch_all(&app.db)
            .await
            .unwrap();
    for (id, purged) in statuses {
        assert_eq!(purged, id == aged, "{id}");
    }
    let active_run = runs::get(&app.db, active).await.unwrap().unwrap();
    assert_eq!(active_run.status, RunStatus::Queued);

    // A purged run whose snapshot nothing else uses cannot be retried.
    let (lone_token, lone_task) = student_with_task(&app).await;
    app.put_text(
        &format!("/api/v1/tasks/{lone_task}/files/main.py"),
        &lone_token,
        "print('alone')\n",
    )
    .await
    .expect(200);
    let lone = finished_run(&app, &lone_token, &lone_task, "alone\n").await;
    sqlx::query("UPDATE runs SET finished_at = now() - interval '10 days' WHERE id = $1")
        .bind(lone)
        .execute(&app.db)
        .await
        .unwrap();
    let before = snapshot_keys(&app).await.len();
    sweep::sweep_all(&app.db, &app.state.storage, &retention(7, 0))
        .await
        .unwrap();
    assert_eq!(snapshot_keys(&app).await.len(), before - 1);
    let refused = app
        .post(
            &format!("/api/v1/runs/{lone}/retry"),
            &lone_token,
            json!({}),
        )
        .await
        .problem(409);
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("no longer stored")
    );
}

/// Opens a log stream and keeps it open: the response is returned as soon as the headers are.
async fn open_stream(app: &TestApp, token: &str, run_id: Uuid) -> http::Response<Body> {
    let request = Request::get(format!("/api/v1/runs/{run_id}/log/stream"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    app.router.clone().oneshot(request).await.unwrap()
}

async fn problem_of(response: http::Response<Body>) -> Value {
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn live_log_streams_are_capped_per_user_and_per_process_with_a_429() {
    let app = spawn_app_with(vec![
        ("runs.log_streams_per_user", "2".into()),
        ("runs.log_streams_per_process", "3".into()),
    ])
    .await;
    let (token, task_id) = student_with_task(&app).await;
    let run_id = id_of(&app.submit(&token, &task_id, json!({})).await);

    let first = open_stream(&app, &token, run_id).await;
    let second = open_stream(&app, &token, run_id).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open_stream(&app, &token, run_id).await;
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key(header::RETRY_AFTER));
    let problem = problem_of(third).await;
    assert!(problem["detail"].as_str().unwrap().contains("2 live logs"));

    // Closing one gives its slot back.
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        let response = open_stream(&app, &token, run_id).await;
        if response.status() == 200 {
            reopened = Some(response);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let reopened = reopened.expect("a closed stream's slot is given back");

    // The process cap holds across users: two streams open, one more fits, then none.
    let (other, other_task) = student_with_task(&app).await;
    let other_run = id_of(&app.submit(&other, &other_task, json!({})).await);
    let fits = open_stream(&app, &other, other_run).await;
    assert_eq!(fits.status(), 200);
    let refused = open_stream(&app, &other, other_run).await;
    assert_eq!(refused.status(), 429);
    let problem = problem_of(refused).await;
    assert!(problem["detail"].as_str().unwrap().contains("this server"));

    // The paged log still answers while the streams are full.
    app.get(&format!("/api/v1/runs/{run_id}/log"), &token)
        .await
        .expect(200);
    drop((second, reopened, fits));
}

/// The expected page `page` of `lines`, by `per_page`.
fn expected_page(lines: &[String], page: usize, per_page: usize) -> Vec<String> {
    lines
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect()
}

#[tokio::test]
async fn log_pages_are_exact_at_every_boundary_from_the_live_log_and_from_log_txt() {
    let app = spawn_app().await;
    let (token, task_id) = student_with_task(&app).await;
    let run_id = id_of(&app.submit(&token, &task_id, json!({})).await);
    crate::runs::advance(
        &app,
        run_id,
        &[
            RunStatus::Dispatched,
            RunStatus::Pending,
            RunStatus::Running,
        ],
    )
    .await;
    // 455 lines, some empty, some long, some with non-ASCII text, in uneven batches.
    let lines: Vec<String> = (1..=455)
        .map(|n| match n % 9 {
            0 => String::new(),
            4 => format!("{n} {}", "é".repeat(n % 50)),
            _ => format!("line {n}{}", "x".repeat(n % 13)),
        })
        .collect();
    let mut next = 0;
    for size in [1, 63, 64, 65, 99, 100, 1, 2, 60] {
        let batch = &lines[next..next + size];
        app.state
            .live_log
            .append(run_id, next as u64 + 1, batch)
            .await
            .unwrap();
        next += size;
    }
    assert_eq!(next, lines.len());
    let per_page = app.state.settings.runs.log_page_lines as usize;
    let page_of = |page: usize| {
        let app = &app;
        let token = token.clone();
        async move {
            app.get(&format!("/api/v1/runs/{run_id}/log?page={page}"), &token)
                .await
                .expect(200)
        }
    };
    for page in 1..=6 {
        let got = page_of(page).await;
        assert_eq!(got["total_lines"], 455);
        assert_eq!(got["total_pages"], 5);
        assert_eq!(got["complete"], false);
        let got: Vec<String> = serde_json::from_value(got["lines"].clone()).unwrap();
        assert_eq!(
            got,
            expected_page(&lines, page, per_page),
            "live page {page}"
        );
    }

    // Ended: log.txt (no final newline) is the record, read by ranges through its index.
    let mut text = lines.join("\n");
    text.push_str("\nlast without newline");
    let mut all = lines.clone();
    all.push("last without newline".into());
    crate::runs::end(&app, run_id, 0).await;
    store_log(&app, run_id, &text).await;
    for page in 1..=6 {
        let got = page_of(page).await;
        assert_eq!(got["total_lines"], 456);
        assert_eq!(got["complete"], true);
        let got: Vec<String> = serde_json::from_value(got["lines"].clone()).unwrap();
        assert_eq!(
            got,
            expected_page(&all, page, per_page),
            "stored page {page}"
        );
    }
    for from in [1, 2, 63, 64, 65, 127, 128, 129, 455, 456, 457] {
        for count in [1, 63, 64, 65, 200] {
            let read = logfile::read(&app.state.storage, run_id, from, count)
                .await
                .unwrap()
                .unwrap();
            let want: Vec<String> = all
                .iter()
                .skip(from as usize - 1)
                .take(count as usize)
                .cloned()
                .collect();
            assert_eq!(read.lines, want, "from {from}, {count} lines");
            assert_eq!(read.total, 456);
        }
    }
    // A log stored without an index (before indexes existed) reads the same.
    app.state
        .storage
        .delete_keys(&[RunObjects::new(run_id).log_index()])
        .await
        .unwrap();
    let got = page_of(5).await;
    let got: Vec<String> = serde_json::from_value(got["lines"].clone()).unwrap();
    assert_eq!(got, expected_page(&all, 5, per_page));
    // The stream's end reads the rest from log.txt too.
    let body = app
        .send_with(
            http::Method::GET,
            &format!("/api/v1/runs/{run_id}/log/stream"),
            Some(&token),
            &[("last-event-id", "450")],
            coderun_tests::app::Payload::Empty,
        )
        .await;
    let events = crate::runs::parse_sse(&body.text());
    let sent: Vec<&str> = events
        .iter()
        .filter(|(event, _, _)| event == "line")
        .map(|(_, _, data)| data.as_str())
        .collect();
    let want: Vec<&str> = all[450..].iter().map(String::as_str).collect();
    assert_eq!(sent, want);
}

#[tokio::test]
async fn a_million_empty_lines_cost_bounded_redis_memory() {
    let app = spawn_app().await;
    let run_id = Uuid::new_v4();
    // As an executor sends them: batches of 256 lines.
    let batch = vec![String::new(); 256];
    let total = 1_000_000u64;
    let mut next = 1u64;
    while next <= total {
        let n = (total - next + 1).min(256) as usize;
        app.state
            .live_log
            .append(run_id, next, &batch[..n])
            .await
            .unwrap();
        next += n as u64;
    }
    assert_eq!(app.state.live_log.len(run_id).await.unwrap(), total);
    let tail = app
        .state
        .live_log
        .range(run_id, total - 2, total + 5)
        .await
        .unwrap();
    assert_eq!(tail, ["", "", ""]);
    let key = app.state.keys.live_log(run_id);
    let bytes: i64 = app
        .state
        .redis
        .custom(
            fred::cmd!("MEMORY"),
            vec!["USAGE", key.as_str(), "SAMPLES", "0"],
        )
        .await
        .unwrap();
    // About a byte per line: the newlines themselves, plus a little per chunk.
    assert!(
        bytes < 2 * 1024 * 1024,
        "{bytes} bytes for a million empty lines"
    );
    let entries: u64 = app
        .state
        .redis
        .custom(fred::cmd!("XLEN"), vec![key.as_str()])
        .await
        .unwrap();
    assert!(entries <= 4000, "{entries} entries");
}

#[tokio::test]
async fn the_archive_streams_a_zip_and_redirects_when_asked_to() {
    let app = spawn_app_with(vec![("storage.archive_redirect_bytes", "2000".into())]).await;
    let (token, task_id) = student_with_task(&app).await;
    let archive = format!("/api/v1/tasks/{task_id}/archive");
    let small = app.get(&archive, &token).await;
    assert_eq!(small.status, 200);
    assert_eq!(small.header("content-type"), Some("application/zip"));
    let zip = zip::ZipArchive::new(std::io::Cursor::new(small.body.to_vec())).unwrap();
    let mut names: Vec<String> = zip
        .file_names()
        .map(|name| name.unwrap().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["README.md", "main.py"]);

    // Over the threshold: built into the bucket, answered with a redirect.
    let big = "y".repeat(3000);
    app.put_text(
        &format!("/api/v1/tasks/{task_id}/files/data/big.txt"),
        &token,
        &big,
    )
    .await
    .expect(201);
    let response = app.get(&archive, &token).await;
    assert_eq!(response.status, 302);
    let url = response.header("location").unwrap().to_owned();
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(body.to_vec())).unwrap();
    let mut content = String::new();
    zip.by_name("data/big.txt")
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, big);
    assert_eq!(app.objects("archives/").await.len(), 1);
}
