use std::io::Read;

use coderun_tests::app::{Payload, TestApp, spawn_app, spawn_app_with};
use http::Method;
use serde_json::json;

async fn setup(app: &TestApp) -> (String, String) {
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "files", "python").await;
    (
        token,
        format!("/api/v1/tasks/{}", task["id"].as_str().unwrap()),
    )
}

#[tokio::test]
async fn saving_creates_then_replaces_and_reading_returns_the_content() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    let created = app
        .put_text(
            &format!("{uri}/files/lib/util.py"),
            &token,
            "def f():\n    return 1\n",
        )
        .await;
    let info = created.expect(201);
    assert_eq!(info["path"], "lib/util.py");
    assert_eq!(info["size"], 22);
    assert_eq!(info["main"], false);
    let replaced = app
        .put_text(&format!("{uri}/files/lib/util.py"), &token, "ü")
        .await
        .expect(200);
    assert_eq!(replaced["size"], 2, "sizes are in bytes");
    let read = app.get(&format!("{uri}/files/lib/util.py"), &token).await;
    assert_eq!(read.status, 200);
    assert_eq!(
        read.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(read.text(), "ü");
    let main = app
        .put_text(&format!("{uri}/files/main.py"), &token, "print('main')\n")
        .await
        .expect(200);
    assert_eq!(main["main"], true);
    let empty = app
        .put_text(&format!("{uri}/files/empty.txt"), &token, "")
        .await
        .expect(201);
    assert_eq!(empty["size"], 0);

    let task = app.get(&uri, &token).await.expect(200);
    assert_eq!(task["file_count"], 4);
    let expected: usize = ["ü", "print('main')\n", ""]
        .iter()
        .map(|s| s.len())
        .sum::<usize>()
        + app
            .get(&format!("{uri}/files/README.md"), &token)
            .await
            .body
            .len();
    assert_eq!(task["total_size"], expected);
}

#[tokio::test]
async fn unsafe_paths_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    let before = app.snapshot().await;
    let deep = vec!["d"; 17].join("/");
    let long = "a".repeat(256);
    let bad = [
        "%2E%2E/escape.py",
        "a/%2e%2e/b.py",
        "./a.py",
        "a/./b.py",
        "a//b.py",
        "a/",
        "a%5Cb.py",
        "a%0Ab.py",
        "a%00b.py",
        "a%09b.py",
        "%2Fabs.py",
        &deep,
        &long,
    ];
    for path in bad {
        app.put_text(&format!("{uri}/files/{path}"), &token, "x")
            .await
            .problem(400);
        app.get(&format!("{uri}/files/{path}"), &token)
            .await
            .problem(400);
        app.delete(&format!("{uri}/files/{path}"), &token)
            .await
            .problem(400);
    }
    assert_eq!(app.snapshot().await, before);
    // The limits themselves are allowed.
    let deepest = vec!["d"; 15].join("/") + "/f";
    app.put_text(&format!("{uri}/files/{deepest}"), &token, "x")
        .await
        .expect(201);
    app.put_text(&format!("{uri}/files/{}", "b".repeat(255)), &token, "x")
        .await
        .expect(201);
}

#[tokio::test]
async fn contents_must_be_utf8_and_within_the_file_limit() {
    let app = spawn_app_with(vec![("limits.max_file_bytes", "1024".into())]).await;
    let (token, uri) = setup(&app).await;
    let before = app.snapshot().await;
    let response = app
        .send(
            Method::PUT,
            &format!("{uri}/files/bin.dat"),
            Some(&token),
            Payload::Raw(vec![0xff, 0xfe, 0x00], "application/octet-stream"),
        )
        .await;
    response.problem(422);
    let problem = app
        .put_text(&format!("{uri}/files/big.txt"), &token, &"x".repeat(1025))
        .await
        .problem(413);
    assert!(problem["detail"].as_str().unwrap().contains("1024"));
    let in_batch = app
        .post(
            &format!("{uri}/files:batch"),
            &token,
            json!({"upsert": [{"path": "big.txt", "content": "x".repeat(1025)}]}),
        )
        .await;
    in_batch.problem(413);
    assert_eq!(app.snapshot().await, before);
    app.put_text(&format!("{uri}/files/fits.txt"), &token, &"x".repeat(1024))
        .await
        .expect(201);
}

#[tokio::test]
async fn a_file_and_a_folder_cannot_share_a_path() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    app.put_text(&format!("{uri}/files/lib/a.py"), &token, "a")
        .await
        .expect(201);
    let before = app.snapshot().await;
    app.put_text(&format!("{uri}/files/lib"), &token, "x")
        .await
        .problem(409);
    app.put_text(&format!("{uri}/files/main.py/inner.py"), &token, "x")
        .await
        .problem(409);
    app.put_text(&format!("{uri}/files/lib/a.py/deeper/x.py"), &token, "x")
        .await
        .problem(409);
    assert_eq!(app.snapshot().await, before);
    // A sibling whose name merely starts like the folder is fine.
    app.put_text(&format!("{uri}/files/lib.py"), &token, "x")
        .await
        .expect(201);
    app.put_text(&format!("{uri}/files/lib-old/a.py"), &token, "x")
        .await
        .expect(201);
}

#[tokio::test]
async fn a_task_holds_a_limited_number_of_files_and_bytes() {
    let app = spawn_app_with(vec![
        ("limits.max_files_per_task", "3".into()),
        ("limits.max_task_bytes", "2000".into()),
    ])
    .await;
    let (token, uri) = setup(&app).await;
    app.put_text(&format!("{uri}/files/third.py"), &token, "3")
        .await
        .expect(201);
    let before = app.snapshot().await;
    let problem = app
        .put_text(&format!("{uri}/files/fourth.py"), &token, "4")
        .await
        .problem(409);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("at most 3 files")
    );
    app.put_text(&format!("{uri}/files/third.py"), &token, &"x".repeat(1900))
        .await
        .problem(409);
    app.post(
        &format!("{uri}/files:batch"),
        &token,
        json!({"upsert": [{"path": "a", "content": ""}, {"path": "b", "content": ""}]}),
    )
    .await
    .problem(409);
    assert_eq!(app.snapshot().await, before);
    // Replacing within the limits still works, and a batch may delete to make room.
    app.put_text(&format!("{uri}/files/third.py"), &token, "33")
        .await
        .expect(200);
    app.post(
        &format!("{uri}/files:batch"),
        &token,
        json!({"delete": ["third.py"], "upsert": [{"path": "fourth.py", "content": "4"}]}),
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn concurrent_saves_never_pass_the_file_limit() {
    let app = spawn_app_with(vec![("limits.max_files_per_task", "4".into())]).await;
    let (token, uri) = setup(&app).await;
    let saves = (0..6).map(|i| {
        let uri = format!("{uri}/files/f{i}.py");
        let token = token.clone();
        let app = &app;
        async move { app.put_text(&uri, &token, "x").await }
    });
    let results = futures::future::join_all(saves).await;
    assert_eq!(results.iter().filter(|r| r.status == 201).count(), 2);
    assert_eq!(results.iter().filter(|r| r.status == 409).count(), 4);
    let task = app.get(&uri, &token).await.expect(200);
    assert_eq!(task["file_count"], 4);
}

#[tokio::test]
async fn deleting_removes_a_file_or_a_whole_folder_but_never_the_main_file() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    for path in ["lib/a.py", "lib/sub/b.py", "libx.py"] {
        app.put_text(&format!("{uri}/files/{path}"), &token, "x")
            .await
            .expect(201);
    }
    let deleted = app
        .delete(&format!("{uri}/files/lib"), &token)
        .await
        .expect(200);
    assert_eq!(deleted["deleted"], json!(["lib/a.py", "lib/sub/b.py"]));
    let deleted = app
        .delete(&format!("{uri}/files/libx.py"), &token)
        .await
        .expect(200);
    assert_eq!(deleted["deleted"], json!(["libx.py"]));
    app.get(&format!("{uri}/files/libx.py"), &token)
        .await
        .problem(404);

    let before = app.snapshot().await;
    app.delete(&format!("{uri}/files/missing.py"), &token)
        .await
        .problem(404);
    app.delete(&format!("{uri}/files/main.py"), &token)
        .await
        .problem(409);
    app.post(
        &format!("{uri}/files:move"),
        &token,
        json!({"from": "main.py", "to": "src/main.py"}),
    )
    .await
    .expect(200);
    let before_folder = app.snapshot().await;
    app.delete(&format!("{uri}/files/src"), &token)
        .await
        .problem(409);
    assert_eq!(app.snapshot().await, before_folder);
    assert_ne!(before, before_folder);
    let task = app.get(&uri, &token).await.expect(200);
    assert_eq!(task["file_count"], 2);
}

#[tokio::test]
async fn reading_a_folder_or_a_missing_file_is_404() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    app.put_text(&format!("{uri}/files/lib/a.py"), &token, "x")
        .await
        .expect(201);
    app.get(&format!("{uri}/files/lib"), &token)
        .await
        .problem(404);
    app.get(&format!("{uri}/files/nothing.py"), &token)
        .await
        .problem(404);
    app.get(
        &format!(
            "{}/files/main.py",
            "/api/v1/tasks/00000000-0000-0000-0000-000000000000"
        ),
        &token,
    )
    .await
    .problem(404);
}

#[tokio::test]
async fn a_batch_applies_all_of_its_changes_or_none() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    app.put_text(&format!("{uri}/files/old/a.py"), &token, "a")
        .await
        .expect(201);
    let result = app
        .post(&format!("{uri}/files:batch"), &token, json!({
            "upsert": [{"path": "new/b.py", "content": "bb"}, {"path": "main.py", "content": "print(3)\n"}],
            "delete": ["old", "README.md"]
        }))
        .await
        .expect(200);
    assert_eq!(result["file_count"], 2);
    assert_eq!(result["total_size"], 2 + 9);
    assert_eq!(
        app.get(&format!("{uri}/files/new/b.py"), &token)
            .await
            .text(),
        "bb"
    );

    let before = app.snapshot().await;
    let failing = [
        (
            json!({"upsert": [{"path": "ok.py", "content": "x"}, {"path": "../bad.py", "content": "x"}]}),
            400,
        ),
        (
            json!({"upsert": [{"path": "ok.py", "content": "x"}], "delete": ["missing"]}),
            404,
        ),
        (
            json!({"upsert": [{"path": "ok.py", "content": "x"}, {"path": "new", "content": "x"}]}),
            409,
        ),
        (
            json!({"upsert": [{"path": "ok.py", "content": "x"}], "delete": ["main.py"]}),
            409,
        ),
        (
            json!({"upsert": [{"path": "ok.py", "content": "x"}, {"path": "ok.py", "content": "y"}]}),
            400,
        ),
        (
            json!({"upsert": [{"path": "new/b.py", "content": "x"}], "delete": ["new/b.py"]}),
            400,
        ),
        (json!({"upsert": [], "delete": []}), 400),
        (json!({}), 400),
        (json!({"upsert": [{"path": "ok.py"}]}), 422),
        (json!({"upsert": "nope"}), 422),
        (json!({"rename": []}), 422),
    ];
    for (body, status) in failing {
        app.post(&format!("{uri}/files:batch"), &token, body)
            .await
            .problem(status);
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn an_oversized_batch_body_is_413() {
    let app = spawn_app_with(vec![("limits.max_batch_bytes", "4096".into())]).await;
    let (token, uri) = setup(&app).await;
    let before = app.snapshot().await;
    let upsert: Vec<_> = (0..10)
        .map(|i| json!({"path": format!("f{i}.txt"), "content": "x".repeat(500)}))
        .collect();
    app.post(
        &format!("{uri}/files:batch"),
        &token,
        json!({"upsert": upsert}),
    )
    .await
    .problem(413);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn moving_renames_files_and_folders_and_keeps_the_main_file_main() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    app.put_text(&format!("{uri}/files/lib/a.py"), &token, "a")
        .await
        .expect(201);
    app.put_text(&format!("{uri}/files/lib/sub/b.py"), &token, "b")
        .await
        .expect(201);

    let moved = app
        .post(
            &format!("{uri}/files:move"),
            &token,
            json!({"from": "main.py", "to": "app/start.py"}),
        )
        .await
        .expect(200);
    assert_eq!(moved["main_file"], "app/start.py");
    let moved = app
        .post(
            &format!("{uri}/files:move"),
            &token,
            json!({"from": "app", "to": "src/app"}),
        )
        .await
        .expect(200);
    assert_eq!(moved["main_file"], "src/app/start.py");
    let moved = app
        .post(
            &format!("{uri}/files:move"),
            &token,
            json!({"from": "lib", "to": "src/lib"}),
        )
        .await
        .expect(200);
    assert_eq!(moved["file_count"], 4);
    assert_eq!(
        app.get(&format!("{uri}/files/src/lib/sub/b.py"), &token)
            .await
            .text(),
        "b"
    );
    app.get(&format!("{uri}/files/lib/a.py"), &token)
        .await
        .problem(404);
    let main = app
        .get(&format!("{uri}/files/src/app/start.py"), &token)
        .await;
    assert!(main.text().contains("Hello from coderun!"));

    let before = app.snapshot().await;
    let refusals = [
        (json!({"from": "src", "to": "src/inner"}), 400),
        (json!({"from": "src", "to": "src"}), 400),
        (json!({"from": "src/lib", "to": "README.md"}), 409),
        (json!({"from": "README.md", "to": "src"}), 409),
        (
            json!({"from": "README.md", "to": "src/app/start.py/x"}),
            409,
        ),
        (json!({"from": "nothing", "to": "else"}), 404),
        (json!({"from": "README.md", "to": "../README.md"}), 400),
        (json!({"from": "README.md"}), 422),
    ];
    for (body, status) in refusals {
        app.post(&format!("{uri}/files:move"), &token, body)
            .await
            .problem(status);
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn the_archive_is_a_zip_of_every_file() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "Lab 1: sorting", "python").await;
    let uri = format!("/api/v1/tasks/{}", task["id"].as_str().unwrap());
    app.put_text(&format!("{uri}/files/data/in.txt"), &token, "3 1 2\n")
        .await
        .expect(201);
    let response = app.get(&format!("{uri}/archive"), &token).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/zip"));
    assert_eq!(
        response.header("content-disposition"),
        Some("attachment; filename=\"Lab-1-sorting.zip\"")
    );
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(response.body.to_vec())).unwrap();
    let mut names: Vec<String> = zip
        .file_names()
        .map(|name| name.unwrap().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["README.md", "data/in.txt", "main.py"]);
    let mut content = String::new();
    zip.by_name("data/in.txt")
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "3 1 2\n");
}

/// `raw` percent-encoded for a URL path, keeping `/`.
fn encode_path(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn names_that_unpack_differently_elsewhere_are_refused_on_every_route() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    app.put_text(&format!("{uri}/files/src/ok.py"), &token, "x")
        .await
        .expect(201);
    let before = app.snapshot().await;
    let bad = [
        "a:b.py",
        "src/c:.py",
        "CON",
        "src/nul.txt",
        "Aux.tar.gz",
        "com1.py",
        "LPT9",
        "prn .txt",
        ".git/config",
        "x/.GIT/hooks/pre-commit",
        ".git",
        "evil\u{202E}yp.exe",
        "a\u{2066}b.py",
        "zero\u{200B}width.py",
        "bom\u{FEFF}.py",
        "joiner\u{200D}.py",
    ];
    for path in bad {
        let problem = app
            .put_text(&format!("{uri}/files/{}", encode_path(path)), &token, "x")
            .await
            .problem(400);
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("path") || detail.contains("Windows"),
            "{path:?}: {problem}"
        );
        app.post(
            &format!("{uri}/files:batch"),
            &token,
            json!({"upsert": [{"path": "fine.py", "content": ""}, {"path": path, "content": "x"}]}),
        )
        .await
        .problem(400);
        app.post(
            &format!("{uri}/files:move"),
            &token,
            json!({"from": "src/ok.py", "to": path}),
        )
        .await
        .problem(400);
        app.post(
            &format!("{uri}/files:move"),
            &token,
            json!({"from": "src", "to": path}),
        )
        .await
        .problem(400);
    }
    assert_eq!(app.snapshot().await, before, "nothing was stored");
    // Their harmless neighbours are fine.
    for ok in [
        "console.py",
        "com10.py",
        ".gitignore",
        ".github/ci.yml",
        "a.git/x",
    ] {
        app.put_text(&format!("{uri}/files/{}", encode_path(ok)), &token, "x")
            .await
            .expect(201);
    }
}

#[tokio::test]
async fn names_differing_only_by_case_or_normalisation_are_refused() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    app.put_text(&format!("{uri}/files/src/a.py"), &token, "x")
        .await
        .expect(201);
    let composed = "caf\u{00E9}.py";
    let decomposed = "cafe\u{0301}.py";
    app.put_text(
        &format!("{uri}/files/{}", encode_path(composed)),
        &token,
        "x",
    )
    .await
    .expect(201);
    let before = app.snapshot().await;
    for clash in ["MAIN.py", "readme.md", "Src/b.py", "SRC", decomposed] {
        let problem = app
            .put_text(&format!("{uri}/files/{}", encode_path(clash)), &token, "x")
            .await
            .problem(409);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("differs only by case"),
            "{problem}"
        );
    }
    // Two spellings in one batch, and a move onto another spelling of an existing name.
    app.post(
        &format!("{uri}/files:batch"),
        &token,
        json!({"upsert": [{"path": "new/x.py", "content": ""}, {"path": "NEW/y.py", "content": ""}]}),
    )
    .await
    .problem(409);
    app.post(
        &format!("{uri}/files:move"),
        &token,
        json!({"from": "src/a.py", "to": "Main.py"}),
    )
    .await
    .problem(409);
    app.post(
        &format!("{uri}/files:move"),
        &token,
        json!({"from": "src", "to": "Cafe\u{0301}.py"}),
    )
    .await
    .problem(409);
    assert_eq!(app.snapshot().await, before, "nothing was stored");
    // Renaming a name to another spelling of itself is a plain rename.
    let task = app
        .post(
            &format!("{uri}/files:move"),
            &token,
            json!({"from": "src", "to": "Src"}),
        )
        .await
        .expect(200);
    let names: Vec<&str> = task["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Src"), "{names:?}");
}

/// The deepest nesting of the tree the API shows.
fn depth(nodes: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&serde_json::Value, usize)> = vec![(nodes, 0)];
    while let Some((level, d)) = stack.pop() {
        for node in level.as_array().into_iter().flatten() {
            deepest = deepest.max(d + 1);
            if let Some(children) = node.get("children") {
                stack.push((children, d + 1));
            }
        }
    }
    deepest
}

#[tokio::test]
async fn alternating_moves_cannot_nest_a_tree_past_the_limits() {
    let app = spawn_app().await;
    let (token, uri) = setup(&app).await;
    app.put_text(&format!("{uri}/files/a/f.txt"), &token, "x")
        .await
        .expect(201);
    // The measured attack: 40 alternating moves, `a/…` → `b/a/…` → `a/b/a/…`, each nesting
    // everything one level deeper with a `to` that is itself a short, valid path.
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..40 {
        let task = app.get(&uri, &token).await.expect(200);
        let top = task["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["kind"] == "folder")
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let (from, to) = if top == "a" {
            ("a", "b/a")
        } else {
            ("b", "a/b")
        };
        let before = app.snapshot().await;
        let response = app
            .post(
                &format!("{uri}/files:move"),
                &token,
                json!({"from": from, "to": to}),
            )
            .await;
        if response.status == 200 {
            accepted += 1;
        } else {
            let problem = response.problem(400);
            assert!(
                problem["detail"].as_str().unwrap().contains("levels deep"),
                "{problem}"
            );
            assert_eq!(
                app.snapshot().await,
                before,
                "a refused move stores nothing"
            );
            refused += 1;
        }
    }
    // `a/f.txt` has two levels: 14 moves take it to the 16 allowed.
    assert_eq!(accepted, 14, "up to 16 levels, then no deeper");
    assert_eq!(refused, 26);
    let task = app.get(&uri, &token).await.expect(200);
    assert_eq!(depth(&task["files"]), 16);

    // The measured set-up: a folder moved below a 15-level `b/b/…` would put its files at 17.
    let deep = vec!["b"; 15].join("/");
    app.put_text(&format!("{uri}/files/{deep}/x.txt"), &token, "x")
        .await
        .expect(201);
    app.put_text(&format!("{uri}/files/c/f.txt"), &token, "x")
        .await
        .expect(201);
    let before = app.snapshot().await;
    app.post(
        &format!("{uri}/files:move"),
        &token,
        json!({"from": "c", "to": format!("{deep}/c")}),
    )
    .await
    .problem(400);
    // Nor may a move make a path longer than the byte limit.
    let long = "n".repeat(200);
    app.post(
        &format!("{uri}/files:move"),
        &token,
        json!({"from": "c", "to": long}),
    )
    .await
    .expect(200);
    let before_long = app.snapshot().await;
    app.post(
        &format!("{uri}/files:move"),
        &token,
        json!({"from": long, "to": format!("{}/{long}", "m".repeat(50))}),
    )
    .await
    .problem(400);
    assert_eq!(app.snapshot().await, before_long);
    assert_ne!(before, before_long);
    // The stack answers normally afterwards.
    app.get(&uri, &token).await.expect(200);
}

#[tokio::test]
async fn concurrent_replacements_keep_the_tasks_totals_exact_and_only_owners_write() {
    let app = spawn_app_with(vec![("limits.max_task_bytes", "5000".into())]).await;
    let (token, uri) = setup(&app).await;
    app.put_text(&format!("{uri}/files/a.txt"), &token, "a")
        .await
        .expect(201);
    let task = app.get(&uri, &token).await.expect(200);
    let base = task["total_size"].as_i64().unwrap() - 1;
    let files = task["file_count"].clone();
    // Replacements of one file, racing: each is 200, and the task's total is its other
    // files plus the size of whichever content was written last.
    let saves = (1..=16).map(|i| {
        let (uri, token, app) = (format!("{uri}/files/a.txt"), token.clone(), &app);
        async move { app.put_text(&uri, &token, &"y".repeat(i * 10)).await }
    });
    for response in futures::future::join_all(saves).await {
        assert_eq!(response.expect(200)["main"], false);
    }
    let content = app.get(&format!("{uri}/files/a.txt"), &token).await.text();
    let task = app.get(&uri, &token).await.expect(200);
    assert_eq!(
        task["total_size"].as_i64().unwrap(),
        base + content.len() as i64
    );
    assert_eq!(task["file_count"], files);

    // A replacement over the task's byte limit is refused and writes nothing; someone else's
    // file: a stranger is told it does not exist, a teacher may not change it.
    let (_, stranger) = app.user("student").await;
    let (_, teacher) = app.user("teacher").await;
    let before = app.snapshot().await;
    app.put_text(&format!("{uri}/files/a.txt"), &token, &"z".repeat(5000))
        .await
        .problem(409);
    app.put_text(&format!("{uri}/files/a.txt"), &stranger, "mine")
        .await
        .problem(404);
    app.put_text(&format!("{uri}/files/a.txt"), &teacher, "mine")
        .await
        .problem(403);
    app.put_text(&format!("{uri}/files/new.txt"), &teacher, "mine")
        .await
        .problem(403);
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused save stores nothing"
    );
    app.put_text(
        &format!("/api/v1/tasks/{}/files/a.txt", uuid::Uuid::new_v4()),
        &token,
        "x",
    )
    .await
    .problem(404);
}

/// A save rewrites its task's change time and totals, and its file's content, size and time.
/// None of those may be indexed: an update that changes an indexed column cannot stay on its
/// page (HOT), so every save would write new entries into all of the table's indexes and leave
/// dead ones behind — at an editor's rate of saves, the indexes of a few hundred tasks grew to
/// megabytes within minutes.
#[tokio::test]
async fn no_column_a_save_writes_is_indexed() {
    let app = spawn_app().await;
    let written = [
        (
            "tasks",
            ["updated_at", "total_size", "file_count"].as_slice(),
        ),
        ("task_files", ["content", "size", "updated_at"].as_slice()),
    ];
    for (table, columns) in written {
        let indexes: Vec<(String, Vec<String>, bool)> = sqlx::query_as(
            "SELECT i.indexrelid::regclass::text,
                    array(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)),
                    i.indexprs IS NOT NULL OR i.indpred IS NOT NULL
               FROM pg_index i WHERE i.indrelid = $1::regclass",
        )
        .bind(table)
        .fetch_all(&app.state.db)
        .await
        .unwrap();
        assert!(!indexes.is_empty(), "{table} has no index");
        for (index, keys, with_expressions) in indexes {
            assert!(
                !with_expressions,
                "{index} indexes an expression of {table}"
            );
            for column in columns {
                assert!(
                    !keys.iter().any(|k| k == column),
                    "{index} indexes {table}.{column}, which every save writes"
                );
            }
        }
    }
}
