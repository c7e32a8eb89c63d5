//! Staff's user routes: the user list with counts, batch creation from CSV or JSON, and a
//! user's tasks by `owner`.

use coderun_tests::app::{Payload, TestApp, spawn_app};
use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// A fresh username with `prefix` (unique per test run).
fn name(prefix: &str) -> String {
    format!("{prefix}{}", &Uuid::new_v4().simple().to_string()[..10])
}

async fn batch(
    app: &TestApp,
    token: Option<&str>,
    payload: Payload,
) -> coderun_tests::app::TestResponse {
    app.send(Method::POST, "/api/v1/users:batch", token, payload)
        .await
}

fn csv(text: &str) -> Payload {
    Payload::Raw(text.as_bytes().to_vec(), "text/csv")
}

/// The report's line for `line`.
fn line(report: &Value, line: u64) -> &Value {
    report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["line"] == line)
        .unwrap_or_else(|| panic!("no line {line} in {report}"))
}

async fn role_of(app: &TestApp, username: &str, password: &str) -> Option<String> {
    let response = app
        .send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Payload::Json(json!({"username": username, "password": password})),
        )
        .await;
    (response.status == 200).then(|| response.json()["user"]["role"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn staff_list_users_with_their_task_and_run_counts() {
    let app = spawn_app().await;
    let (student_id, student) = app.user("student").await;
    let (_, teacher) = app.user("teacher").await;
    let first = app.task(&student, "one", "python").await;
    app.task(&student, "two", "python").await;
    app.submit(&student, first["id"].as_str().unwrap(), json!({}))
        .await;

    for token in [&teacher, &app.admin().await] {
        let page = app
            .get("/api/v1/users?per_page=100", token)
            .await
            .expect(200);
        let items = page["items"].as_array().unwrap();
        assert_eq!(page["total"], items.len() as u64);
        assert_eq!(page["page"], 1);
        assert_eq!(page["per_page"], 100);
        let names: Vec<&str> = items
            .iter()
            .map(|u| u["username"].as_str().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "by username");
        let mine = items
            .iter()
            .find(|u| u["id"] == student_id.as_str())
            .unwrap();
        assert_eq!(mine["role"], "student");
        assert_eq!(mine["task_count"], 2);
        assert_eq!(mine["run_count"], 1);
        assert!(mine["created_at"].as_str().is_some());
        assert!(mine.get("password_hash").is_none());
        let admin = items.iter().find(|u| u["username"] == "admin").unwrap();
        assert_eq!(admin["role"], "admin");
        assert_eq!(admin["task_count"], 0);
        assert_eq!(admin["run_count"], 0);
    }
}

#[tokio::test]
async fn the_user_list_filters_by_name_and_role_and_pages() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let tag = name("zz");
    for (suffix, role) in [("a", "student"), ("b", "student"), ("c", "teacher")] {
        app.post(
            "/api/v1/users",
            &admin,
            json!({"username": format!("{tag}{suffix}"), "password": "password-123", "role": role}),
        )
        .await
        .expect(201);
    }
    let all = app
        .get(&format!("/api/v1/users?q={tag}"), &admin)
        .await
        .expect(200);
    assert_eq!(all["total"], 3);
    // Postgres text cannot hold NUL and no name holds one: nothing matches (it was a 500).
    let nul = app
        .get(&format!("/api/v1/users?q={tag}%00"), &admin)
        .await
        .expect(200);
    assert_eq!(nul["total"], 0);
    // Case-insensitive.
    let upper = tag.to_uppercase();
    let shouting = app
        .get(&format!("/api/v1/users?q={upper}"), &admin)
        .await
        .expect(200);
    assert_eq!(shouting["total"], 3);
    let teachers = app
        .get(&format!("/api/v1/users?q={tag}&role=teacher"), &admin)
        .await
        .expect(200);
    assert_eq!(teachers["total"], 1);
    assert_eq!(teachers["items"][0]["username"], format!("{tag}c"));
    let second = app
        .get(
            &format!("/api/v1/users?q={tag}&role=student&per_page=1&page=2"),
            &admin,
        )
        .await
        .expect(200);
    assert_eq!(second["total"], 2);
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["username"], format!("{tag}b"));
    let admins = app
        .get("/api/v1/users?role=admin", &admin)
        .await
        .expect(200);
    assert!(
        admins["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["role"] == "admin"),
        "{admins}"
    );
    // LIKE's wildcards are plain text.
    let wild = app.get("/api/v1/users?q=%25", &admin).await.expect(200);
    assert_eq!(wild["total"], 0);
}

#[tokio::test]
async fn students_may_not_list_users_and_bad_parameters_are_refused() {
    let app = spawn_app().await;
    let (_, student) = app.user("student").await;
    app.get("/api/v1/users", &student).await.problem(403);
    app.send(Method::GET, "/api/v1/users", None, Payload::Empty)
        .await
        .problem(401);
    app.get("/api/v1/users", "not-a-token").await.problem(401);

    let admin = app.admin().await;
    for query in [
        "role=wizard",
        "role=",
        "page=0",
        "per_page=0",
        "per_page=1000",
        "page=x",
        &format!("q={}", "a".repeat(101)),
    ] {
        app.get(&format!("/api/v1/users?{query}"), &admin)
            .await
            .problem(400);
    }
}

#[tokio::test]
async fn an_admin_creates_users_from_csv_with_a_report_per_line() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (ok1, ok2, ok3, bad_role) = (name("s"), name("t"), name("q"), name("r"));
    let body = format!(
        "username,password,role\n\
         {ok1},password-1,student\n\
         {ok2},password-2,teacher\n\
         Not Valid,password-3,student\n\
         {bad_role},password-4,wizard\n\
         {short},short,student\n\
         {ok1},password-6,student\n\
         demo,password-7,student\n\
         {few},password-8\n\
         \n\
         \"{ok3}\",\"pass,word \"\"9\"\"\",admin\n",
        short = name("p"),
        few = name("f"),
    );
    let report = batch(&app, Some(&admin), csv(&body)).await.expect(200);
    assert_eq!(report["created"], 3, "{report}");
    assert_eq!(report["failed"], 6, "{report}");
    assert_eq!(report["lines"].as_array().unwrap().len(), 9);

    for (n, username) in [(2, &ok1), (3, &ok2), (11, &ok3)] {
        let l = line(&report, n);
        assert_eq!(l["status"], "created", "{l}");
        assert_eq!(l["username"], username.as_str());
        assert!(l["detail"].is_null());
        assert!(
            l["id"]
                .as_str()
                .is_some_and(|id| id.parse::<Uuid>().is_ok())
        );
    }
    for (n, needle) in [
        (4, "username"),
        (5, "role"),
        (6, "password"),
        (7, "line 2"),
        (8, "taken"),
        (9, "fields"),
    ] {
        let l = line(&report, n);
        assert_eq!(l["status"], "error", "{l}");
        assert!(l["id"].is_null());
        assert!(
            l["detail"].as_str().is_some_and(|d| d.contains(needle)),
            "line {n}: {l}"
        );
    }

    // The created users log in with their passwords and roles; the refused ones do not exist.
    assert_eq!(
        role_of(&app, &ok1, "password-1").await.as_deref(),
        Some("student")
    );
    assert_eq!(
        role_of(&app, &ok2, "password-2").await.as_deref(),
        Some("teacher")
    );
    assert_eq!(
        role_of(&app, &ok3, "pass,word \"9\"").await.as_deref(),
        Some("admin")
    );
    assert_eq!(role_of(&app, &bad_role, "password-4").await, None);
    assert_eq!(
        role_of(&app, "demo", "demo").await.as_deref(),
        Some("student"),
        "demo keeps its password"
    );
    let listed = app
        .get(&format!("/api/v1/users?q={ok1}"), &admin)
        .await
        .expect(200);
    assert_eq!(listed["total"], 1, "the duplicate line created nobody");
}

#[tokio::test]
async fn a_csv_from_a_spreadsheet_is_read_as_meant() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (a, b) = (name("x"), name("y"));
    // A byte order mark, CRLF endings, the columns in another order and case, spaces around
    // fields and a text/csv content type with parameters.
    let body = format!(
        "\u{feff}Role , USERNAME,Password\r\nstudent, {a} ,secret-pass-1\r\n teacher,{b},secret-pass-2\r\n"
    );
    let report = batch(
        &app,
        Some(&admin),
        Payload::Raw(body.into_bytes(), "text/csv; charset=utf-8"),
    )
    .await
    .expect(200);
    assert_eq!(report["created"], 2, "{report}");
    assert_eq!(line(&report, 2)["username"], a.as_str(), "{report}");
    assert_eq!(
        role_of(&app, &a, "secret-pass-1").await.as_deref(),
        Some("student")
    );
    assert_eq!(
        role_of(&app, &b, "secret-pass-2").await.as_deref(),
        Some("teacher")
    );
}

#[tokio::test]
async fn an_admin_creates_users_from_json_with_a_report_per_user() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (ok, taken) = (name("j"), name("k"));
    app.post(
        "/api/v1/users",
        &admin,
        json!({"username": taken, "password": "password-123", "role": "student"}),
    )
    .await
    .expect(201);
    let report = app
        .post(
            "/api/v1/users:batch",
            &admin,
            json!({"users": [
                {"username": ok, "password": "password-1", "role": "teacher"},
                {"username": taken, "password": "password-2", "role": "student"},
                {"username": "x", "password": "password-3", "role": "student"},
            ]}),
        )
        .await
        .expect(200);
    assert_eq!(report["created"], 1);
    assert_eq!(report["failed"], 2);
    assert_eq!(line(&report, 1)["status"], "created");
    assert_eq!(line(&report, 1)["role"], "teacher");
    assert!(
        line(&report, 2)["detail"]
            .as_str()
            .unwrap()
            .contains("taken")
    );
    assert_eq!(line(&report, 3)["status"], "error");
    assert_eq!(
        role_of(&app, &ok, "password-1").await.as_deref(),
        Some("teacher")
    );
    assert_eq!(
        role_of(&app, &taken, "password-2").await,
        None,
        "the taken name keeps its password"
    );
}

#[tokio::test]
async fn only_admins_create_users_in_batches() {
    let app = spawn_app().await;
    let (_, teacher) = app.user("teacher").await;
    let (_, student) = app.user("student").await;
    let before = app.snapshot().await;
    let body = format!("username,password,role\n{},password-1,admin\n", name("e"));
    for token in [&teacher, &student] {
        batch(&app, Some(token), csv(&body)).await.problem(403);
    }
    batch(&app, None, csv(&body)).await.problem(401);
    assert_eq!(app.snapshot().await, before, "nothing stored");
}

#[tokio::test]
async fn a_batch_that_cannot_be_read_as_a_whole_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let before = app.snapshot().await;
    let user = name("w");
    let many_csv = {
        let mut text = String::from("username,password,role\n");
        for i in 0..1001 {
            text.push_str(&format!("{user}{i},password-1,student\n"));
        }
        text
    };
    let many_json = json!({"users": (0..1001)
        .map(|i| json!({"username": format!("{user}{i}"), "password": "password-1", "role": "student"}))
        .collect::<Vec<_>>()});
    let cases: Vec<(Payload, u16)> = vec![
        (Payload::Empty, 415),
        (
            Payload::Text(format!(
                "username,password,role\n{user},password-1,student\n"
            )),
            415,
        ),
        (csv(""), 400),
        (csv("username,password,role\n"), 400),
        (csv(&format!("{user},password-1,student\n")), 400),
        (csv(&format!("username,password\n{user},password-1\n")), 400),
        (
            csv(&format!(
                "username,password,role,email\n{user},password-1,student,x@y\n"
            )),
            400,
        ),
        (
            csv(&format!("username,username,role\n{user},{user},student\n")),
            400,
        ),
        (
            Payload::Raw(
                b"username,password,role\n\xff\xfe,password-1,student\n".to_vec(),
                "text/csv",
            ),
            400,
        ),
        (csv(&many_csv), 413),
        (Payload::Json(many_json), 413),
        (Payload::Raw(vec![b'a'; 2 * 1024 * 1024], "text/csv"), 413),
        (Payload::Raw(b"{not json".to_vec(), "application/json"), 400),
        (Payload::Json(json!({"users": []})), 400),
        (Payload::Json(json!({"users": {"username": user}})), 422),
        (
            Payload::Json(json!([{"username": user, "password": "password-1", "role": "student"}])),
            422,
        ),
        (
            Payload::Json(json!({"users": [{"username": user, "password": "password-1"}]})),
            422,
        ),
        (
            Payload::Json(
                json!({"users": [{"username": user, "password": "password-1", "role": "student", "admin": true}]}),
            ),
            422,
        ),
    ];
    for (i, (payload, status)) in cases.into_iter().enumerate() {
        let response = batch(&app, Some(&admin), payload).await;
        assert_eq!(
            response.status.as_u16(),
            status,
            "case {i}: {}",
            response.text()
        );
        response.problem(status);
    }
    assert_eq!(app.snapshot().await, before, "nothing stored");
}

#[tokio::test]
async fn staff_list_a_users_tasks_by_owner_and_by_its_former_name_owner_id() {
    let app = spawn_app().await;
    let (student_id, student) = app.user("student").await;
    let (other_id, other) = app.user("student").await;
    let (_, teacher) = app.user("teacher").await;
    app.task(&student, "mine", "python").await;
    app.task(&other, "theirs", "python").await;

    for query in [
        format!("owner={student_id}"),
        format!("owner_id={student_id}"),
    ] {
        let page = app
            .get(&format!("/api/v1/tasks?{query}"), &teacher)
            .await
            .expect(200);
        assert_eq!(page["total"], 1, "{query}");
        assert_eq!(page["items"][0]["name"], "mine");
        assert_eq!(page["items"][0]["owner_id"], student_id.as_str());
    }
    // Both, naming the same user, are fine; naming two users is not.
    app.get(
        &format!("/api/v1/tasks?owner={student_id}&owner_id={student_id}"),
        &teacher,
    )
    .await
    .expect(200);
    app.get(
        &format!("/api/v1/tasks?owner={student_id}&owner_id={other_id}"),
        &teacher,
    )
    .await
    .problem(400);
    app.get("/api/v1/tasks?owner=not-a-uuid", &teacher)
        .await
        .problem(400);
    // An unknown user has no tasks.
    let none = app
        .get(&format!("/api/v1/tasks?owner={}", Uuid::new_v4()), &teacher)
        .await
        .expect(200);
    assert_eq!(none["total"], 0);

    // A student may name themself, never someone else.
    let own = app
        .get(&format!("/api/v1/tasks?owner={student_id}"), &student)
        .await
        .expect(200);
    assert_eq!(own["total"], 1);
    app.get(&format!("/api/v1/tasks?owner={other_id}"), &student)
        .await
        .problem(403);
}
