use coderun_tests::app::{Payload, spawn_app, spawn_app_with};
use http::Method;
use serde_json::{Value, json};

fn paths(tree: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(nodes: &Value, out: &mut Vec<String>) {
        for node in nodes.as_array().unwrap() {
            out.push(format!(
                "{}:{}",
                node["kind"].as_str().unwrap(),
                node["path"].as_str().unwrap()
            ));
            if let Some(children) = node.get("children") {
                walk(children, out);
            }
        }
    }
    walk(tree, &mut out);
    out
}

#[tokio::test]
async fn a_new_task_gets_its_languages_default_files_with_the_main_file_set() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    for (language, main) in [
        ("python", "main.py"),
        ("r", "main.R"),
        ("scala", "Main.scala"),
        ("java", "Main.java"),
    ] {
        let task = app
            .post("/api/v1/tasks", &token, json!({"name": format!("Lab {language}"), "language": language, "description": "first lab"}))
            .await
            .expect(201);
        assert_eq!(task["language"], language);
        assert_eq!(task["description"], "first lab");
        assert_eq!(task["main_file"], main);
        assert_eq!(task["command"], Value::Null);
        assert_eq!(task["file_count"], 2);
        let files = task["files"].as_array().unwrap();
        let main_node = files.iter().find(|n| n["path"] == main).unwrap();
        assert_eq!(main_node["main"], true);
        assert_eq!(main_node["kind"], "file");
        let sizes: i64 = files.iter().map(|n| n["size"].as_i64().unwrap()).sum();
        assert_eq!(task["total_size"], sizes);
        let id = task["id"].as_str().unwrap();
        let content = app
            .get(&format!("/api/v1/tasks/{id}/files/{main}"), &token)
            .await;
        assert_eq!(content.status, 200);
        assert!(content.text().contains("Hello from coderun!"));
    }
}

#[tokio::test]
async fn refused_task_creation_stores_nothing() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let before = app.snapshot().await;
    let bad_requests = [
        json!({"name": "x", "language": "cobol"}),
        json!({"name": "", "language": "python"}),
        json!({"name": "   ", "language": "python"}),
        json!({"name": "x".repeat(101), "language": "python"}),
        json!({"name": "tab\there", "language": "python"}),
        json!({"name": "ok", "language": "python", "description": "d".repeat(10_001)}),
    ];
    for body in bad_requests {
        app.post("/api/v1/tasks", &token, body).await.problem(400);
    }
    for body in [
        json!({"name": 5, "language": "python"}),
        json!({"language": "python"}),
        json!({"name": "x", "language": "python", "owner_id": "x"}),
    ] {
        app.post("/api/v1/tasks", &token, body).await.problem(422);
    }
    app.send(
        Method::POST,
        "/api/v1/tasks",
        Some(&token),
        Payload::Raw(b"{\"name\": ".to_vec(), "application/json"),
    )
    .await
    .problem(400);
    app.send(
        Method::POST,
        "/api/v1/tasks",
        None,
        Payload::Json(json!({"name": "x", "language": "python"})),
    )
    .await
    .problem(401);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn tasks_per_user_are_capped() {
    let app = spawn_app_with(vec![("limits.max_tasks_per_user", "2".into())]).await;
    let token = app.login("demo", "demo").await;
    app.task(&token, "one", "python").await;
    app.task(&token, "two", "python").await;
    let before = app.snapshot().await;
    let problem = app
        .post(
            "/api/v1/tasks",
            &token,
            json!({"name": "three", "language": "python"}),
        )
        .await
        .problem(409);
    assert!(problem["detail"].as_str().unwrap().contains("2 tasks"));
    assert_eq!(app.snapshot().await, before);
    // Another user has their own allowance.
    let (_, other) = app.user("student").await;
    app.task(&other, "theirs", "python").await;
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_cap() {
    let app = spawn_app_with(vec![("limits.max_tasks_per_user", "3".into())]).await;
    let token = app.login("demo", "demo").await;
    let attempts = (0..8).map(|i| {
        app.post(
            "/api/v1/tasks",
            &token,
            json!({"name": format!("t{i}"), "language": "python"}),
        )
    });
    let results = futures::future::join_all(attempts).await;
    let created = results.iter().filter(|r| r.status == 201).count();
    let refused = results.iter().filter(|r| r.status == 409).count();
    assert_eq!((created, refused), (3, 5));
}

#[tokio::test]
async fn the_list_shows_the_callers_tasks_newest_change_first_with_paging_and_filters() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let (_, other) = app.user("student").await;
    app.task(&other, "not mine", "python").await;
    let mut ids = Vec::new();
    for (name, language) in [
        ("Sorting", "python"),
        ("Graphs", "java"),
        ("Sorting again", "r"),
        ("Stats", "r"),
    ] {
        ids.push(
            app.task(&token, name, language).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Touch the first task: it becomes the newest change.
    app.put_text(
        &format!("/api/v1/tasks/{}/files/extra.py", ids[0]),
        &token,
        "x = 1\n",
    )
    .await
    .expect(201);

    let page = app.get("/api/v1/tasks", &token).await.expect(200);
    assert_eq!(page["total"], 4);
    assert_eq!(page["page"], 1);
    assert_eq!(page["per_page"], 20);
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Sorting", "Stats", "Sorting again", "Graphs"]);

    let second = app
        .get("/api/v1/tasks?page=2&per_page=3", &token)
        .await
        .expect(200);
    assert_eq!(second["total"], 4);
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["name"], "Graphs");
    let beyond = app
        .get("/api/v1/tasks?page=9&per_page=3", &token)
        .await
        .expect(200);
    assert_eq!(beyond["items"].as_array().unwrap().len(), 0);

    let r = app
        .get("/api/v1/tasks?language=r", &token)
        .await
        .expect(200);
    assert_eq!(r["total"], 2);
    let q = app.get("/api/v1/tasks?q=SORT", &token).await.expect(200);
    assert_eq!(q["total"], 2);
    let both = app
        .get("/api/v1/tasks?q=sort&language=r", &token)
        .await
        .expect(200);
    assert_eq!(both["total"], 1);
    let wildcard = app.get("/api/v1/tasks?q=%25", &token).await.expect(200);
    assert_eq!(
        wildcard["total"], 0,
        "q is a plain substring, not a LIKE pattern"
    );
    // Postgres text cannot hold NUL and no name holds one: nothing matches (it was a 500).
    let nul = app.get("/api/v1/tasks?q=SO%00RT", &token).await.expect(200);
    assert_eq!(nul["total"], 0);
    assert_eq!(nul["items"].as_array().unwrap().len(), 0);

    for bad in [
        "page=0",
        "page=-1",
        "page=x",
        "per_page=0",
        "per_page=101",
        "language=cobol",
        &format!("q={}", "x".repeat(101)),
    ] {
        app.get(&format!("/api/v1/tasks?{bad}"), &token)
            .await
            .problem(400);
    }
}

#[tokio::test]
async fn another_students_task_does_not_exist_for_you() {
    let app = spawn_app().await;
    let owner = app.login("demo", "demo").await;
    let (_, stranger) = app.user("student").await;
    let task = app.task(&owner, "private", "python").await;
    let id = task["id"].as_str().unwrap();
    let before = app.snapshot().await;
    app.get(&format!("/api/v1/tasks/{id}"), &stranger)
        .await
        .problem(404);
    app.patch(
        &format!("/api/v1/tasks/{id}"),
        &stranger,
        json!({"name": "mine now"}),
    )
    .await
    .problem(404);
    app.delete(&format!("/api/v1/tasks/{id}"), &stranger)
        .await
        .problem(404);
    app.get(&format!("/api/v1/tasks/{id}/files/main.py"), &stranger)
        .await
        .problem(404);
    app.put_text(&format!("/api/v1/tasks/{id}/files/evil.py"), &stranger, "x")
        .await
        .problem(404);
    app.delete(&format!("/api/v1/tasks/{id}/files/main.py"), &stranger)
        .await
        .problem(404);
    app.get(&format!("/api/v1/tasks/{id}/archive"), &stranger)
        .await
        .problem(404);
    app.post(
        &format!("/api/v1/tasks/{id}/files:move"),
        &stranger,
        json!({"from": "main.py", "to": "x.py"}),
    )
    .await
    .problem(404);
    app.post(
        &format!("/api/v1/tasks/{id}/files:batch"),
        &stranger,
        json!({"delete": ["README.md"]}),
    )
    .await
    .problem(404);
    let owner_id = task["owner_id"].as_str().unwrap();
    app.get(&format!("/api/v1/tasks?owner_id={owner_id}"), &stranger)
        .await
        .problem(403);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn teachers_and_admins_read_every_task_but_change_none() {
    let app = spawn_app().await;
    let owner = app.login("demo", "demo").await;
    let task = app.task(&owner, "homework", "python").await;
    let id = task["id"].as_str().unwrap();
    let owner_id = task["owner_id"].as_str().unwrap();
    let (_, teacher) = app.user("teacher").await;
    let admin = app.admin().await;
    for reader in [&teacher, &admin] {
        app.get(&format!("/api/v1/tasks/{id}"), reader)
            .await
            .expect(200);
        let content = app
            .get(&format!("/api/v1/tasks/{id}/files/main.py"), reader)
            .await;
        assert_eq!(content.status, 200);
        app.get(&format!("/api/v1/tasks/{id}/archive"), reader)
            .await;
        let list = app
            .get(&format!("/api/v1/tasks?owner_id={owner_id}"), reader)
            .await
            .expect(200);
        assert_eq!(list["total"], 1);
        let before = app.snapshot().await;
        app.patch(
            &format!("/api/v1/tasks/{id}"),
            reader,
            json!({"name": "graded"}),
        )
        .await
        .problem(403);
        app.put_text(
            &format!("/api/v1/tasks/{id}/files/main.py"),
            reader,
            "print(1)",
        )
        .await
        .problem(403);
        app.delete(&format!("/api/v1/tasks/{id}"), reader)
            .await
            .problem(403);
        assert_eq!(app.snapshot().await, before);
        // Their own list stays their own.
        assert_eq!(
            app.get("/api/v1/tasks", reader).await.expect(200)["total"],
            0
        );
    }
}

#[tokio::test]
async fn malformed_task_ids_are_404() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    app.get("/api/v1/tasks/123", &token).await.problem(404);
    app.get("/api/v1/tasks/not-a-uuid/files/main.py", &token)
        .await
        .problem(404);
    app.get(&format!("/api/v1/tasks/{}", uuid::Uuid::new_v4()), &token)
        .await
        .problem(404);
}

#[tokio::test]
async fn patching_renames_describes_and_sets_the_main_file_and_command() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "draft", "python").await;
    let id = task["id"].as_str().unwrap();
    let uri = format!("/api/v1/tasks/{id}");
    app.put_text(&format!("{uri}/files/solution.py"), &token, "print(2)\n")
        .await
        .expect(201);

    let patched = app
        .patch(&uri, &token, json!({"name": "final", "description": "done", "main_file": "solution.py", "command": "python3 -O solution.py"}))
        .await
        .expect(200);
    assert_eq!(patched["name"], "final");
    assert_eq!(patched["description"], "done");
    assert_eq!(patched["main_file"], "solution.py");
    assert_eq!(patched["command"], "python3 -O solution.py");
    assert!(patched["updated_at"].as_str() > task["updated_at"].as_str());
    let main_nodes: Vec<_> = patched["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["main"] == true)
        .collect();
    assert_eq!(main_nodes.len(), 1);
    assert_eq!(main_nodes[0]["path"], "solution.py");

    // Absent fields stay; an explicit null command returns to the language's default.
    let reset = app
        .patch(&uri, &token, json!({"command": null}))
        .await
        .expect(200);
    assert_eq!(reset["command"], Value::Null);
    assert_eq!(reset["name"], "final");
    let same = app.patch(&uri, &token, json!({})).await.expect(200);
    assert_eq!(same["main_file"], "solution.py");

    let before = app.snapshot().await;
    app.patch(&uri, &token, json!({"main_file": "missing.py"}))
        .await
        .problem(409);
    app.patch(&uri, &token, json!({"main_file": "../etc/passwd"}))
        .await
        .problem(400);
    app.patch(&uri, &token, json!({"name": ""}))
        .await
        .problem(400);
    app.patch(&uri, &token, json!({"command": "   "}))
        .await
        .problem(400);
    app.patch(&uri, &token, json!({"name": "ok", "command": "x\u{0}y"}))
        .await
        .problem(400);
    app.patch(&uri, &token, json!({"main_file": 3}))
        .await
        .problem(422);
    app.patch(&uri, &token, json!({"language": "java"}))
        .await
        .problem(422);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn deleting_a_task_removes_it_and_its_files() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let keep = app.task(&token, "keep", "python").await;
    let task = app.task(&token, "bin", "python").await;
    let id = task["id"].as_str().unwrap();
    let response = app.delete(&format!("/api/v1/tasks/{id}"), &token).await;
    assert_eq!(response.status, 204);
    app.get(&format!("/api/v1/tasks/{id}"), &token)
        .await
        .problem(404);
    app.delete(&format!("/api/v1/tasks/{id}"), &token)
        .await
        .problem(404);
    let snapshot = app.snapshot().await;
    let files = snapshot["files"].as_array().unwrap();
    assert!(files.iter().all(|f| f["task_id"] == keep["id"]));
    assert_eq!(files.len(), 2);
}

#[tokio::test]
async fn the_tree_nests_folders_and_sums_their_sizes() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let task = app.task(&token, "tree", "python").await;
    let id = task["id"].as_str().unwrap();
    for (path, content) in [
        ("src/util/io.py", "12345"),
        ("src/app.py", "123"),
        ("data/in.txt", "1"),
    ] {
        app.put_text(&format!("/api/v1/tasks/{id}/files/{path}"), &token, content)
            .await
            .expect(201);
    }
    let tree = app
        .get(&format!("/api/v1/tasks/{id}"), &token)
        .await
        .expect(200);
    assert_eq!(
        paths(&tree["files"]),
        [
            "folder:data",
            "file:data/in.txt",
            "folder:src",
            "folder:src/util",
            "file:src/util/io.py",
            "file:src/app.py",
            "file:README.md",
            "file:main.py"
        ]
    );
    let src = &tree["files"][1];
    assert_eq!(src["name"], "src");
    assert_eq!(src["size"], 8);
    assert_eq!(tree["file_count"], 5);
}
