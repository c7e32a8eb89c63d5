use coderun_shared::auth::Authenticator;
use coderun_shared::config::Settings;
use coderun_shared::domain::Role;
use coderun_tests::app::{Payload, spawn_app};
use http::Method;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn logging_in_returns_a_token_the_api_accepts() {
    let app = spawn_app().await;
    let response = app
        .send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Payload::Json(json!({"username": "demo", "password": "demo"})),
        )
        .await;
    let body = response.expect(200);
    assert_eq!(body["user"]["username"], "demo");
    assert_eq!(body["user"]["role"], "student");
    assert!(body["expires_at"].as_str().is_some());
    let token = body["token"].as_str().unwrap();
    let me = app.get("/api/v1/me", token).await.expect(200);
    assert_eq!(me["username"], "demo");
    assert_eq!(me["id"], body["user"]["id"]);
    assert!(me.get("password_hash").is_none());
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_are_refused_alike() {
    let app = spawn_app().await;
    for (user, password) in [
        ("demo", "wrong"),
        ("nobody", "demo"),
        ("demo", ""),
        (&*"x".repeat(500), "demo"),
    ] {
        let response = app
            .send(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Payload::Json(json!({"username": user, "password": password})),
            )
            .await;
        let problem = response.problem(401);
        assert_eq!(problem["detail"], "wrong username or password");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }
}

#[tokio::test]
async fn malformed_login_bodies_are_client_errors() {
    let app = spawn_app().await;
    let cases: Vec<(Payload, u16)> = vec![
        (Payload::Raw(b"{not json".to_vec(), "application/json"), 400),
        (Payload::Json(json!({"username": 1, "password": "x"})), 422),
        (Payload::Json(json!({"username": "demo"})), 422),
        (
            Payload::Json(json!({"username": "demo", "password": "demo", "extra": true})),
            422,
        ),
        (
            Payload::Raw(
                br#"{"username":"demo","password":"demo"}"#.to_vec(),
                "text/plain",
            ),
            415,
        ),
        (Payload::Empty, 415),
    ];
    for (payload, status) in cases {
        app.send(Method::POST, "/api/v1/auth/login", None, payload)
            .await
            .problem(status);
    }
}

#[tokio::test]
async fn missing_bad_expired_and_foreign_tokens_are_401() {
    let app = spawn_app().await;
    let demo_id: Uuid = {
        let token = app.login("demo", "demo").await;
        app.get("/api/v1/me", &token).await.expect(200)["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    app.send(Method::GET, "/api/v1/me", None, Payload::Empty)
        .await
        .problem(401);
    app.get("/api/v1/me", "garbage").await.problem(401);

    let expired = {
        let mut auth = app.state.settings.auth.clone();
        auth.token_ttl_seconds = 0;
        let authenticator = Authenticator::new(&auth).unwrap();
        // Issued with a zero lifetime, then aged past the verifier's leeway.
        let (token, _) = authenticator.issue(demo_id, Role::Student).unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(7)).await;
        token
    };
    app.get("/api/v1/me", &expired).await.problem(401);

    let foreign = Settings::with_overrides([
        ("local_stack", "true".to_string()),
        (
            "auth.jwt_secret",
            "a-different-secret-that-is-long-enough".to_string(),
        ),
    ])
    .unwrap();
    let (forged, _) = Authenticator::new(&foreign.auth)
        .unwrap()
        .issue(demo_id, Role::Admin)
        .unwrap();
    app.get("/api/v1/me", &forged).await.problem(401);

    // A well-signed token for a user that does not exist is nobody.
    let authenticator = Authenticator::new(&app.state.settings.auth).unwrap();
    let (ghost, _) = authenticator.issue(Uuid::new_v4(), Role::Student).unwrap();
    app.get("/api/v1/me", &ghost).await.problem(401);
}

#[tokio::test]
async fn admins_create_users_of_every_role() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    for role in ["student", "teacher", "admin"] {
        let name = format!("new-{role}");
        let user = app
            .post(
                "/api/v1/users",
                &admin,
                json!({"username": name, "password": "long-enough", "role": role}),
            )
            .await
            .expect(201);
        assert_eq!(user["role"], role);
        assert!(user["id"].as_str().unwrap().parse::<Uuid>().is_ok());
        let token = app.login(&name, "long-enough").await;
        assert_eq!(
            app.get("/api/v1/me", &token).await.expect(200)["role"],
            role
        );
    }
}

#[tokio::test]
async fn refused_user_creation_stores_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (_, teacher) = app.user("teacher").await;
    let student = app.login("demo", "demo").await;
    let before = app.snapshot().await;
    let ok = json!({"username": "fresh", "password": "long-enough", "role": "student"});

    app.post("/api/v1/users", &student, ok.clone())
        .await
        .problem(403);
    app.post("/api/v1/users", &teacher, ok.clone())
        .await
        .problem(403);
    app.send(Method::POST, "/api/v1/users", None, Payload::Json(ok))
        .await
        .problem(401);
    app.post(
        "/api/v1/users",
        &admin,
        json!({"username": "demo", "password": "long-enough", "role": "student"}),
    )
    .await
    .problem(409);
    for bad in ["ab", "UPPER", "-dash", "white space", &"x".repeat(33)] {
        app.post(
            "/api/v1/users",
            &admin,
            json!({"username": bad, "password": "long-enough", "role": "student"}),
        )
        .await
        .problem(400);
    }
    app.post(
        "/api/v1/users",
        &admin,
        json!({"username": "fresh", "password": "short", "role": "student"}),
    )
    .await
    .problem(400);
    app.post(
        "/api/v1/users",
        &admin,
        json!({"username": "fresh", "password": "long-enough", "role": "root"}),
    )
    .await
    .problem(422);
    assert_eq!(app.snapshot().await, before);
}
