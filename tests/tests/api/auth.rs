use coderun_shared::auth::Authenticator;
use coderun_shared::config::Settings;
use coderun_shared::domain::Role;
use coderun_tests::app::{Payload, spawn_app, spawn_app_with};
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

/// A login from `address` (the trusted gateway header the test app is told about, when set).
async fn login_from(
    app: &coderun_tests::app::TestApp,
    address: Option<&str>,
    username: &str,
    password: &str,
) -> coderun_tests::app::TestResponse {
    let headers: Vec<(&str, &str)> = address
        .map(|a| vec![("x-forwarded-for", a)])
        .unwrap_or_default();
    app.send_with(
        Method::POST,
        "/api/v1/auth/login",
        None,
        &headers,
        Payload::Json(json!({"username": username, "password": password})),
    )
    .await
}

/// Asserts a 429 problem whose `Retry-After` is within `seconds`, and returns its detail.
#[track_caller]
fn throttled(
    response: &coderun_tests::app::TestResponse,
    seconds: std::ops::RangeInclusive<u64>,
) -> String {
    let problem = response.problem(429);
    let wait: u64 = response
        .header("retry-after")
        .expect("a 429 says when to retry")
        .parse()
        .unwrap();
    assert!(seconds.contains(&wait), "Retry-After {wait}: {problem}");
    problem["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_flood_of_wrong_passwords_locks_the_account_for_a_growing_while() {
    let app = spawn_app_with(vec![
        ("login.lockout_after_failures", "3".into()),
        ("login.lockout_base_seconds", "2".into()),
        ("login.lockout_max_seconds", "4".into()),
    ])
    .await;
    let pause = |ms| tokio::time::sleep(std::time::Duration::from_millis(ms));
    for _ in 0..3 {
        login_from(&app, None, "demo", "guess").await.problem(401);
    }
    // Locked for 2 s: the flood is refused before any password is hashed, and so is the
    // right password.
    let hashed = app.state.hashes.computed();
    for _ in 0..20 {
        let detail = throttled(&login_from(&app, None, "demo", "guess").await, 1..=2);
        assert!(detail.contains("locked"), "{detail}");
    }
    throttled(&login_from(&app, None, "demo", "demo").await, 1..=2);
    assert_eq!(
        app.state.hashes.computed(),
        hashed,
        "a refusal costs no hash"
    );

    // After the lockout one more failure locks it again, twice as long …
    pause(2100).await;
    login_from(&app, None, "demo", "guess").await.problem(401);
    throttled(&login_from(&app, None, "demo", "demo").await, 3..=4);
    // … up to lockout_max_seconds.
    pause(4100).await;
    login_from(&app, None, "demo", "guess").await.problem(401);
    throttled(&login_from(&app, None, "demo", "demo").await, 3..=4);

    // Once it is over, the right password works, and a success forgets the failures.
    pause(4100).await;
    login_from(&app, None, "demo", "demo").await.expect(200);
    login_from(&app, None, "demo", "guess").await.problem(401);
    login_from(&app, None, "demo", "demo").await.expect(200);
    // Other accounts were never affected.
    login_from(&app, None, "admin", "admin").await.expect(200);
}

#[tokio::test]
async fn unknown_names_are_locked_out_like_real_accounts() {
    let app = spawn_app_with(vec![("login.lockout_after_failures", "2".into())]).await;
    for name in ["demo", "nobody"] {
        login_from(&app, None, name, "guess").await.problem(401);
        login_from(&app, None, name, "guess").await.problem(401);
        throttled(&login_from(&app, None, name, "guess").await, 1..=2);
    }
}

#[tokio::test]
async fn every_client_address_has_its_own_budget_of_failures() {
    let app = spawn_app_with(vec![
        ("login.client_address_header", "x-forwarded-for".into()),
        ("login.address_max_failures", "4".into()),
        ("login.address_window_seconds", "60".into()),
    ])
    .await;
    let attacker = "203.0.113.7";
    for i in 0..4 {
        login_from(&app, Some(attacker), &format!("user{i}"), "guess")
            .await
            .problem(401);
    }
    let refused = login_from(&app, Some(attacker), "user9", "guess").await;
    let detail = refused.problem(429)["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("address"), "{detail}");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Even the right password, from that address, and whatever it puts before the gateway's
    // own entry in the header.
    login_from(&app, Some(attacker), "demo", "demo")
        .await
        .problem(429);
    login_from(
        &app,
        Some(&format!("198.51.100.1, {attacker}")),
        "demo",
        "demo",
    )
    .await
    .problem(429);
    // Another address is not affected, nor a list whose right-most entry is another address.
    login_from(&app, Some("198.51.100.1"), "demo", "demo")
        .await
        .expect(200);
    login_from(
        &app,
        Some(&format!("{attacker}, 198.51.100.2")),
        "demo",
        "demo",
    )
    .await
    .expect(200);
    // IPv6 counts by /64: a neighbour in the same /64 shares the budget.
    for i in 0..4 {
        login_from(&app, Some(&format!("2001:db8:7:7::{i}")), "nobody", "x")
            .await
            .problem(401);
    }
    login_from(&app, Some("2001:db8:7:7:ffff::1"), "demo", "demo")
        .await
        .problem(429);
    login_from(&app, Some("2001:db8:7:8::1"), "demo", "demo")
        .await
        .expect(200);
}

#[tokio::test]
async fn logins_from_one_address_are_capped_even_when_they_succeed() {
    let app = spawn_app_with(vec![
        ("login.client_address_header", "x-forwarded-for".into()),
        ("login.address_max_attempts", "3".into()),
    ])
    .await;
    for _ in 0..3 {
        login_from(&app, Some("192.0.2.1"), "demo", "demo")
            .await
            .expect(200);
    }
    let detail = login_from(&app, Some("192.0.2.1"), "demo", "demo")
        .await
        .problem(429)["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("too many logins from this address"),
        "{detail}"
    );
    login_from(&app, Some("192.0.2.2"), "demo", "demo")
        .await
        .expect(200);
}

#[tokio::test]
async fn over_a_real_socket_the_peer_is_the_client_and_a_forged_header_changes_nothing() {
    use coderun_functions::app;
    use coderun_functions::state::AppState;
    use coderun_tests::app::{fresh_bucket, fresh_database, test_settings};
    let database = fresh_database().await;
    let mut overrides = test_settings(&database, &fresh_bucket());
    overrides.push(("login.address_max_failures", "2".into()));
    let state = AppState::build(Settings::with_overrides(overrides).unwrap())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/v1/auth/login",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::serve(listener, app::router(state), async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let attempt = |user: &str, password: &str, forged: Option<&str>| {
        let mut request = client
            .post(&url)
            .json(&json!({"username": user, "password": password}));
        if let Some(forged) = forged {
            request = request.header("x-forwarded-for", forged);
        }
        request.send()
    };
    assert_eq!(attempt("a1", "x", None).await.unwrap().status(), 401);
    assert_eq!(attempt("a2", "x", None).await.unwrap().status(), 401);
    let refused = attempt("demo", "demo", None).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    // No gateway header is configured, so one sent by the client is not believed.
    let forged = attempt("demo", "demo", Some("198.51.100.9")).await.unwrap();
    assert_eq!(forged.status(), 429);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn unknown_users_cost_one_hash_like_known_ones() {
    let app = spawn_app_with(vec![
        ("login.lockout_after_failures", "1000".into()),
        ("auth.argon2_memory_kib", "8192".into()),
        ("auth.argon2_iterations", "2".into()),
    ])
    .await;
    let hashes = || app.state.hashes.computed();
    let overlong = "x".repeat(500);
    for (user, password) in [
        ("demo", "wrong"),
        ("nobody", "wrong"),
        (overlong.as_str(), "wrong"),
        ("demo", "demo"),
    ] {
        let before = hashes();
        let response = login_from(&app, None, user, password).await;
        assert!(response.status == 200 || response.status == 401);
        assert_eq!(hashes(), before + 1, "{user}: exactly one hash");
    }
    // And the hash is as costly: the median of unknown-user logins is not a fraction of the
    // median of known-user logins (it was 1.1 ms against 38 ms before the dummy hash).
    let known = median_failed_login(&app, "demo").await;
    let unknown = median_failed_login(&app, "nobody").await;
    assert!(
        unknown * 4 > known,
        "unknown {unknown:?} against known {known:?}"
    );
}

async fn median_failed_login(app: &coderun_tests::app::TestApp, user: &str) -> std::time::Duration {
    let mut times = Vec::new();
    for _ in 0..7 {
        let started = std::time::Instant::now();
        login_from(app, None, user, "wrong").await.problem(401);
        times.push(started.elapsed());
    }
    times.sort();
    times[3]
}

#[tokio::test]
async fn parallel_logins_never_hash_more_than_the_permits_at_once() {
    let app = spawn_app_with(vec![
        ("login.max_concurrent_hashes", "2".into()),
        ("auth.argon2_memory_kib", "4096".into()),
        ("auth.argon2_iterations", "2".into()),
    ])
    .await;
    assert_eq!(app.state.hashes.capacity(), 2);
    let logins = (0..16).map(|i| {
        let app = &app;
        async move {
            let (user, password) = if i % 2 == 0 {
                ("demo", "demo")
            } else {
                ("admin", "admin")
            };
            login_from(app, None, user, password).await.status
        }
    });
    let statuses = futures::future::join_all(logins).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let peak = app.state.hashes.peak();
    assert!((1..=2).contains(&peak), "{peak} at once");
    assert_eq!(app.state.hashes.in_flight(), 0);
}

#[tokio::test]
async fn a_login_that_finds_every_hash_slot_busy_is_told_to_retry() {
    let app = spawn_app_with(vec![
        ("login.max_concurrent_hashes", "1".into()),
        ("login.hash_wait_seconds", "0".into()),
        ("auth.argon2_memory_kib", "16384".into()),
        ("auth.argon2_iterations", "3".into()),
    ])
    .await;
    let before = app.snapshot().await;
    let logins = (0..8).map(|_| {
        let app = &app;
        async move { login_from(app, None, "demo", "demo").await }
    });
    let responses = futures::future::join_all(logins).await;
    let busy: Vec<_> = responses.iter().filter(|r| r.status == 429).collect();
    assert!(
        responses.iter().any(|r| r.status == 200),
        "one of them got the slot"
    );
    assert!(!busy.is_empty(), "the others did not wait");
    for response in busy {
        let detail = throttled(response, 1..=1);
        assert!(detail.contains("too many logins"), "{detail}");
    }
    assert!(
        responses.iter().all(|r| r.status == 200 || r.status == 429),
        "never a server error"
    );
    assert_eq!(app.snapshot().await, before);
    login_from(&app, None, "demo", "demo").await.expect(200);
}
