//! Datasets through the API on the real servers: staff create, upload (a small file through
//! the API, a large one straight to S3 by presigned multipart URLs) and publish versions;
//! students read published versions only; runs pin the exact version; deletes wait for the
//! runs that use a version; every refusal stores nothing.

use std::time::Duration;

use coderun_shared::datasets;
use coderun_shared::runs::RunStatus;
use coderun_tests::app::{Payload, TestApp, spawn_app_with};
use coderun_tests::servers::TestServers;
use http::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::runs::{advance, complete, end, id_of, student_with_task};

/// The API's limit on one file's body in these tests: the multipart file is larger.
const FILE_LIMIT: usize = 1024 * 1024;

async fn app() -> TestApp {
    spawn_app_with(vec![("limits.max_file_bytes", FILE_LIMIT.to_string())]).await
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Incompressible-looking bytes, so no layer could shortcut them.
fn bytes_of(n: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn put_file(app: &TestApp, token: &str, name: &str, path: &str, content: &[u8]) -> u16 {
    app.send(
        Method::PUT,
        &format!("/api/v1/datasets/{name}/files/{path}"),
        Some(token),
        Payload::Raw(content.to_vec(), "application/octet-stream"),
    )
    .await
    .status
    .as_u16()
}

/// Sends `content` through a multipart upload announced as `sha` (its real checksum unless a
/// test lies); returns the completion's response.
async fn upload(
    app: &TestApp,
    token: &str,
    name: &str,
    path: &str,
    content: &[u8],
    sha: &str,
) -> coderun_tests::app::TestResponse {
    let created = app
        .post(
            &format!("/api/v1/datasets/{name}/uploads"),
            token,
            json!({"path": path, "size": content.len(), "sha256": sha}),
        )
        .await
        .expect(201);
    let part_size = created["part_size"].as_u64().unwrap() as usize;
    let client = reqwest::Client::new();
    for part in created["parts"].as_array().unwrap() {
        let n = part["number"].as_u64().unwrap() as usize;
        let chunk = &content[(n - 1) * part_size..(n * part_size).min(content.len())];
        assert_eq!(chunk.len() as u64, part["size"].as_u64().unwrap());
        let put = client
            .put(part["url"].as_str().unwrap())
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{put:?}");
    }
    let id = created["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/datasets/{name}/uploads/{id}:complete"),
        token,
        json!({}),
    )
    .await
}

async fn create(app: &TestApp, token: &str, name: &str) -> Value {
    app.post(
        "/api/v1/datasets",
        token,
        json!({"name": name, "title": "Iris flowers", "description": "150 flowers", "source": "UCI, CC BY 4.0"}),
    )
    .await
    .expect(201)
}

fn files_of(version: &Value) -> Vec<(String, i64, String)> {
    version["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["size"].as_i64().unwrap(),
                f["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_teacher_uploads_small_and_multipart_files_and_publishes_two_immutable_versions() {
    let app = app().await;
    let (_, teacher) = app.user("teacher").await;
    let (_, student) = app.user("student").await;
    let created = create(&app, &teacher, "iris").await;
    assert_eq!(created["latest_version"], Value::Null);
    assert_eq!(created["draft"]["files"], json!([]));
    // Not published yet: staff see it, students do not.
    assert_eq!(
        app.get("/api/v1/datasets", &student).await.expect(200),
        json!([])
    );
    app.get("/api/v1/datasets/iris", &student)
        .await
        .problem(404);

    let small = b"sepal,petal\n5.1,1.4\n".to_vec();
    assert_eq!(
        put_file(&app, &teacher, "iris", "iris.csv", &small).await,
        201
    );
    let large = bytes_of(9 * 1024 * 1024 + 123, 7);
    assert!(large.len() > FILE_LIMIT);
    // Through the API it is too large; through a multipart upload it goes.
    let refused = put_file(&app, &teacher, "iris", "raw/large.bin", &large).await;
    assert_eq!(refused, 413);
    let done = upload(
        &app,
        &teacher,
        "iris",
        "raw/large.bin",
        &large,
        &sha256(&large),
    )
    .await;
    let entry = done.expect(201);
    assert_eq!(entry["sha256"], sha256(&large));
    assert_eq!(entry["size"], large.len());

    let v1 = app
        .post("/api/v1/datasets/iris:publish", &teacher, json!({}))
        .await
        .expect(201);
    assert_eq!(v1["version"], "v1");
    assert_eq!(v1["ref"], "iris@v1");
    assert_eq!(v1["file_count"], 2);
    assert_eq!(v1["size"], (small.len() + large.len()) as i64);
    assert_eq!(
        files_of(&v1),
        [
            ("iris.csv".to_owned(), small.len() as i64, sha256(&small)),
            (
                "raw/large.bin".to_owned(),
                large.len() as i64,
                sha256(&large)
            ),
        ]
    );
    // Publishing the same draft again makes no new version.
    app.post("/api/v1/datasets/iris:publish", &teacher, json!({}))
        .await
        .problem(409);

    let small2 = b"sepal,petal\n5.1,1.4\n4.9,1.4\n".to_vec();
    assert_eq!(
        put_file(&app, &teacher, "iris", "iris.csv", &small2).await,
        200
    );
    let v2 = app
        .post("/api/v1/datasets/iris:publish", &teacher, json!({}))
        .await
        .expect(201);
    assert_eq!(v2["version"], "v2");

    // Both versions' objects are in the bucket where the layout says, with their bytes.
    let storage = &app.state.storage;
    assert_eq!(
        storage
            .get("datasets/iris/v1/iris.csv")
            .await
            .unwrap()
            .as_ref(),
        small.as_slice()
    );
    assert_eq!(
        storage
            .get("datasets/iris/v2/iris.csv")
            .await
            .unwrap()
            .as_ref(),
        small2.as_slice()
    );
    assert_eq!(
        storage
            .sha256_of("datasets/iris/v1/raw/large.bin")
            .await
            .unwrap(),
        Some((large.len() as u64, sha256(&large)))
    );

    // A student lists and reads the published versions, without the draft.
    let list = app.get("/api/v1/datasets", &student).await.expect(200);
    assert_eq!(list[0]["name"], "iris");
    assert_eq!(list[0]["title"], "Iris flowers");
    assert_eq!(list[0]["latest_version"], "v2");
    let versions: Vec<&str> = list[0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v1", "v2"]);
    let detail = app.get("/api/v1/datasets/iris", &student).await.expect(200);
    assert_eq!(detail["draft"], Value::Null);
    assert_eq!(detail["source"], "UCI, CC BY 4.0");
    assert_eq!(files_of(&detail["versions"][0]), files_of(&v1));
    assert_eq!(detail["versions"][1]["files"][0]["sha256"], sha256(&small2));
    let staff = app.get("/api/v1/datasets/iris", &teacher).await.expect(200);
    assert_eq!(staff["draft"]["file_count"], 2);
}

#[tokio::test]
async fn students_cannot_create_upload_publish_or_delete_and_teachers_cannot_delete() {
    let app = app().await;
    let (_, teacher) = app.user("teacher").await;
    let (_, student) = app.user("student").await;
    app.publish_dataset("iris", &[("a.csv", b"1")]).await;
    let before = app.stored().await;

    app.post(
        "/api/v1/datasets",
        &student,
        json!({"name": "mine", "title": "Mine"}),
    )
    .await
    .problem(403);
    for name in ["iris", "nope"] {
        assert_eq!(put_file(&app, &student, name, "b.csv", b"2").await, 403);
        app.post(
            &format!("/api/v1/datasets/{name}/uploads"),
            &student,
            json!({"path": "c.bin", "size": 10, "sha256": "0".repeat(64)}),
        )
        .await
        .problem(403);
        app.post(
            &format!("/api/v1/datasets/{name}:publish"),
            &student,
            json!({}),
        )
        .await
        .problem(403);
        app.delete(&format!("/api/v1/datasets/{name}/files/a.csv"), &student)
            .await
            .problem(403);
        for token in [&student, &teacher] {
            app.delete(&format!("/api/v1/datasets/{name}"), token)
                .await
                .problem(403);
            app.delete(&format!("/api/v1/datasets/{name}/versions/v1"), token)
                .await
                .problem(403);
        }
    }
    let upload = format!(
        "/api/v1/datasets/iris/uploads/{}:complete",
        uuid::Uuid::new_v4()
    );
    app.post(&upload, &student, json!({})).await.problem(403);
    assert_eq!(
        app.stored().await,
        before,
        "a refused request stores nothing"
    );
}

#[tokio::test]
async fn a_bad_checksum_on_completion_is_refused_and_nothing_is_stored_or_published() {
    let app = app().await;
    let (_, teacher) = app.user("teacher").await;
    create(&app, &teacher, "iris").await;
    let before = app.stored().await;
    let content = bytes_of(2 * 1024 * 1024, 3);
    let lie = sha256(b"something else");
    let problem = upload(&app, &teacher, "iris", "data.bin", &content, &lie)
        .await
        .problem(422);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"),
        "{problem}"
    );
    // The assembled object, the upload and the draft: all as before.
    assert_eq!(app.stored().await, before);
    assert!(app.objects("datasets/").await.is_empty());
    app.post("/api/v1/datasets/iris:publish", &teacher, json!({}))
        .await
        .problem(409);
    let detail = app.get("/api/v1/datasets/iris", &teacher).await.expect(200);
    assert_eq!(detail["versions"], json!([]));
    assert_eq!(detail["draft"]["files"], json!([]));
}

#[tokio::test]
async fn bad_names_paths_sizes_and_quotas_are_clear_problems_that_store_nothing() {
    let app = spawn_app_with(vec![
        ("limits.max_file_bytes", FILE_LIMIT.to_string()),
        ("datasets.max_dataset_bytes", "100".into()),
        ("datasets.max_total_bytes", "150".into()),
    ])
    .await;
    let (_, teacher) = app.user("teacher").await;
    create(&app, &teacher, "iris").await;
    assert_eq!(
        put_file(&app, &teacher, "iris", "a.csv", &[b'a'; 60]).await,
        201
    );
    let before = app.stored().await;

    for (body, status, needle) in [
        (json!({"name": "Iris", "title": "x"}), 400, "dataset name"),
        (json!({"name": "../x", "title": "x"}), 400, "dataset name"),
        (json!({"name": "a@v1", "title": "x"}), 400, "dataset name"),
        (json!({"name": "ok", "title": "  "}), 400, "title"),
        (
            json!({"name": "iris", "title": "again"}),
            409,
            "exists already",
        ),
        (json!({"name": "ok"}), 422, ""),
    ] {
        let problem = app
            .post("/api/v1/datasets", &teacher, body)
            .await
            .problem(status);
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
    }
    // Paths follow the task files' rules; `a.csv` being a file, `a.csv/b` cannot be one.
    for path in ["..%2Fx", ".git/config", "a:b", "a.csv/b"] {
        let status = put_file(&app, &teacher, "iris", path, b"1").await;
        assert!(status == 400 || status == 409, "{path}: {status}");
    }
    assert_eq!(put_file(&app, &teacher, "nope", "a.csv", b"1").await, 404);
    // The dataset quota (100 bytes: 60 are used) and the file limit of a PUT.
    let problem = app
        .send(
            Method::PUT,
            "/api/v1/datasets/iris/files/b.csv",
            Some(&teacher),
            Payload::Raw(vec![b'b'; 41], "application/octet-stream"),
        )
        .await
        .problem(413);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("datasets.max_dataset_bytes")
    );
    let uploads = "/api/v1/datasets/iris/uploads";
    for (body, status, needle) in [
        (
            json!({"path": "b.bin", "size": 41, "sha256": "0".repeat(64)}),
            413,
            "max_dataset_bytes",
        ),
        (
            json!({"path": "b.bin", "size": 1, "sha256": "xyz"}),
            400,
            "sha256",
        ),
        (
            json!({"path": "/abs", "size": 1, "sha256": "0".repeat(64)}),
            400,
            "relative",
        ),
        (
            // Past what the schema and Postgres hold.
            json!({"path": "b.bin", "size": 9_223_372_036_854_775_808u64, "sha256": "0".repeat(64)}),
            422,
            "at most",
        ),
    ] {
        let problem = app.post(uploads, &teacher, body).await.problem(status);
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
    }
    let unknown = format!("{uploads}/{}:complete", uuid::Uuid::new_v4());
    app.post(&unknown, &teacher, json!({})).await.problem(404);
    app.post(&format!("{uploads}/x:finish"), &teacher, json!({}))
        .await
        .problem(404);
    app.post("/api/v1/datasets/iris:unpublish", &teacher, json!({}))
        .await
        .problem(405);
    app.get("/api/v1/datasets/iris:publish", &teacher)
        .await
        .problem(405);
    let admin = app.admin().await;
    app.delete("/api/v1/datasets/iris/versions/v1", &admin)
        .await
        .problem(404);
    app.delete("/api/v1/datasets/iris/versions/1", &admin)
        .await
        .problem(404);
    assert_eq!(app.stored().await, before, "refusals store nothing");

    // The total quota (150 bytes) counts versions and drafts together.
    app.post("/api/v1/datasets/iris:publish", &teacher, json!({}))
        .await
        .expect(201);
    create(&app, &teacher, "more").await;
    let problem = app
        .send(
            Method::PUT,
            "/api/v1/datasets/more/files/x",
            Some(&teacher),
            Payload::Raw(vec![b'x'; 31], "application/octet-stream"),
        )
        .await
        .problem(413);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("datasets.max_total_bytes")
    );
    // An upload announced within the quota that completes with no part is refused, kept.
    let created = app
        .post(
            "/api/v1/datasets/more/uploads",
            &teacher,
            json!({"path": "p", "size": 5, "sha256": sha256(b"12345")}),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();
    let problem = app
        .post(
            &format!("/api/v1/datasets/more/uploads/{id}:complete"),
            &teacher,
            json!({}),
        )
        .await
        .problem(409);
    assert!(
        problem["detail"].as_str().unwrap().contains("no parts"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_run_pins_the_version_and_its_retry_gets_it_again_after_a_newer_one() {
    let app = app().await;
    app.publish_dataset("iris", &[("a.csv", b"v1")]).await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app
        .submit(&token, &task_id, json!({"datasets": ["iris"]}))
        .await;
    assert_eq!(run["datasets"], json!(["iris@v1"]));
    complete(&app, id_of(&run), 0).await;
    assert_eq!(app.publish_dataset("iris", &[("a.csv", b"v2")]).await, "v2");

    let retried = app
        .post(
            &format!("/api/v1/runs/{}/retry", id_of(&run)),
            &token,
            json!({}),
        )
        .await
        .expect(202);
    assert_eq!(
        retried["datasets"],
        json!(["iris@v1"]),
        "the retry mounts v1 again"
    );
    complete(&app, id_of(&retried), 0).await;
    let latest = app
        .submit(&token, &task_id, json!({"datasets": ["iris"]}))
        .await;
    assert_eq!(latest["datasets"], json!(["iris@v2"]));
    complete(&app, id_of(&latest), 0).await;
    let pinned = app
        .submit(&token, &task_id, json!({"datasets": ["iris@v1"]}))
        .await;
    assert_eq!(pinned["datasets"], json!(["iris@v1"]));
}

#[tokio::test]
async fn deleting_a_version_a_run_uses_is_refused_and_afterwards_its_objects_go() {
    let app = app().await;
    app.publish_dataset("iris", &[("a.csv", b"v1")]).await;
    app.publish_dataset("iris", &[("a.csv", b"v2")]).await;
    let admin = app.admin().await;
    let (token, task_id) = student_with_task(&app).await;
    let run = app
        .submit(&token, &task_id, json!({"datasets": ["iris@v1"]}))
        .await;
    let run_id = id_of(&run);

    let before = app.stored().await;
    for (uri, phase) in [
        ("/api/v1/datasets/iris/versions/v1", "queued"),
        ("/api/v1/datasets/iris", "queued"),
    ] {
        let problem = app.delete(uri, &admin).await.problem(409);
        assert!(
            problem["detail"].as_str().unwrap().contains("use"),
            "{phase}: {problem}"
        );
    }
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
    app.delete("/api/v1/datasets/iris/versions/v1", &admin)
        .await
        .problem(409);
    assert_eq!(app.stored().await["objects"], before["objects"]);
    // v2 is not in use: it could go; v1 waits for the run.
    end(&app, run_id, 0).await;

    app.delete("/api/v1/datasets/iris/versions/v1", &admin)
        .await
        .expect(204);
    // The rows went at once; the objects go with the sweep.
    let sweep = datasets::sweep(&app.db, &app.state.storage, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(sweep.removed >= 1, "{sweep:?}");
    assert!(app.objects("datasets/iris/v1/").await.is_empty());
    assert_eq!(
        app.objects("datasets/iris/v2/").await,
        ["datasets/iris/v2/a.csv"]
    );
    let detail = app.get("/api/v1/datasets/iris", &token).await.expect(200);
    assert_eq!(detail["versions"].as_array().unwrap().len(), 1);
    // A run naming the deleted version is refused.
    let problem = app
        .post(
            &format!("/api/v1/tasks/{task_id}/runs"),
            &token,
            json!({"datasets": ["iris@v1"]}),
        )
        .await
        .problem(400);
    assert!(
        problem["detail"].as_str().unwrap().contains("v2"),
        "{problem}"
    );
    // Its number is never given again.
    assert_eq!(app.publish_dataset("iris", &[("a.csv", b"v3")]).await, "v3");

    // The whole dataset, then: rows at once, objects with the sweep, its name free after it.
    app.delete("/api/v1/datasets/iris", &admin)
        .await
        .expect(204);
    app.post(
        "/api/v1/datasets",
        &admin,
        json!({"name": "iris", "title": "again"}),
    )
    .await
    .problem(409);
    datasets::sweep(&app.db, &app.state.storage, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(app.objects("datasets/").await.is_empty());
    app.post(
        "/api/v1/datasets",
        &admin,
        json!({"name": "iris", "title": "again"}),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn abandoned_uploads_are_aborted_by_the_sweep() {
    let app = app().await;
    let (_, teacher) = app.user("teacher").await;
    create(&app, &teacher, "iris").await;
    let content = bytes_of(100, 1);
    let created = app
        .post(
            "/api/v1/datasets/iris/uploads",
            &teacher,
            json!({"path": "a.bin", "size": content.len(), "sha256": sha256(&content)}),
        )
        .await
        .expect(201);
    let put = reqwest::Client::new()
        .put(created["parts"][0]["url"].as_str().unwrap())
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    // Younger than the age limit: kept.
    let swept = datasets::sweep(&app.db, &app.state.storage, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(swept.abandoned_uploads, 0);
    let swept = datasets::sweep(&app.db, &app.state.storage, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(swept.abandoned_uploads, 1);
    assert_eq!(swept.removed, 1);
    let id = created["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/datasets/iris/uploads/{id}:complete"),
        &teacher,
        json!({}),
    )
    .await
    .problem(404);
    let detail = app.get("/api/v1/datasets/iris", &teacher).await.expect(200);
    assert_eq!(detail["draft"]["uploads"], json!([]));
    assert!(app.objects("datasets/").await.is_empty());
}

#[tokio::test]
async fn presigned_urls_carry_the_public_endpoint_and_still_download() {
    // S3 listens on 127.0.0.1; clients reach it as `localhost`.
    let internal = TestServers::get().s3_endpoint.clone();
    assert!(internal.contains("127.0.0.1"), "{internal}");
    let public = internal.replace("127.0.0.1", "localhost");
    let app = spawn_app_with(vec![
        ("storage.public_endpoint", public.clone()),
        ("storage.archive_redirect_bytes", "1".into()),
    ])
    .await;
    let host = |url: &str| {
        reqwest::Url::parse(url)
            .unwrap()
            .host_str()
            .unwrap()
            .to_owned()
    };
    let (_, teacher) = app.user("teacher").await;
    create(&app, &teacher, "iris").await;

    // Multipart part URLs.
    let content = bytes_of(1000, 9);
    let created = app
        .post(
            "/api/v1/datasets/iris/uploads",
            &teacher,
            json!({"path": "a.bin", "size": content.len(), "sha256": sha256(&content)}),
        )
        .await
        .expect(201);
    let part_url = created["parts"][0]["url"].as_str().unwrap();
    assert_eq!(host(part_url), "localhost");
    let put = reqwest::Client::new()
        .put(part_url)
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{put:?}");
    let id = created["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/datasets/iris/uploads/{id}:complete"),
        &teacher,
        json!({}),
    )
    .await
    .expect(201);
    // A published file's download URL.
    app.post("/api/v1/datasets/iris:publish", &teacher, json!({}))
        .await
        .expect(201);
    let detail = app.get("/api/v1/datasets/iris", &teacher).await.expect(200);
    let file_url = detail["versions"][0]["files"][0]["url"].as_str().unwrap();
    assert_eq!(host(file_url), "localhost");
    let got = reqwest::get(file_url).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), content.as_slice());

    // A task archive over the redirect threshold, and a run's log: 302 to the public host.
    let (token, task_id) = student_with_task(&app).await;
    let archive = app
        .get(&format!("/api/v1/tasks/{task_id}/archive"), &token)
        .await;
    assert_eq!(archive.status.as_u16(), 302);
    let location = archive.header("location").unwrap().to_owned();
    assert_eq!(host(&location), "localhost");
    let zip = reqwest::get(&location).await.unwrap();
    assert!(zip.status().is_success());
    assert!(zip.bytes().await.unwrap().starts_with(b"PK"));

    let run = app.submit(&token, &task_id, json!({})).await;
    crate::runs::store_log(&app, id_of(&run), "hello\n").await;
    complete(&app, id_of(&run), 0).await;
    let download = app
        .get(
            &format!("/api/v1/runs/{}/log/download", id_of(&run)),
            &token,
        )
        .await;
    let location = download.header("location").unwrap().to_owned();
    assert_eq!(host(&location), "localhost");
    assert_eq!(
        reqwest::get(&location).await.unwrap().text().await.unwrap(),
        "hello\n"
    );

    // The servers themselves keep the internal endpoint.
    let internal_url = app
        .state
        .storage
        .presigned_get_internal("anything")
        .await
        .unwrap();
    assert_eq!(host(&internal_url), "127.0.0.1");
}
