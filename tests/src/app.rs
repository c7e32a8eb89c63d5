//! `spawn_app`: a coderun API for one test, with its own database (cloned from a migrated
//! template), its own bucket and its own Redis key prefix, on the process's shared real servers.

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use coderun_functions::app;
use coderun_functions::state::AppState;
use coderun_shared::config::Settings;
use fred::interfaces::StreamsInterface;
use http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;
use tower::ServiceExt;
use uuid::Uuid;

use crate::servers::TestServers;

const TEMPLATE_DB: &str = "coderun_template";

/// A running API for one test, called in-process through the router.
pub struct TestApp {
    pub state: AppState,
    pub router: Router,
    pub db: PgPool,
    pub database: String,
}

/// The settings every test app starts from: the local stack's, on this test's database and
/// bucket, with a Redis key prefix of its own (`t-<uuid>`) and a cheap password hash so logins
/// do not dominate test time.
pub fn test_settings(database: &str, bucket: &str) -> Vec<(&'static str, String)> {
    let servers = TestServers::get();
    vec![
        ("local_stack", "true".into()),
        ("database.url", servers.database_url(database)),
        ("database.max_connections", "8".into()),
        ("storage.endpoint", servers.s3_endpoint.clone()),
        ("storage.access_key", servers.s3_access_key.clone()),
        ("storage.secret_key", servers.s3_secret_key.clone()),
        ("storage.bucket", bucket.into()),
        ("storage.create_bucket", "true".into()),
        ("redis.url", servers.redis_url.clone()),
        ("redis.prefix", format!("t-{}", Uuid::new_v4().simple())),
        ("auth.argon2_memory_kib", "1024".into()),
        ("auth.argon2_iterations", "1".into()),
    ]
}

/// Creates the migrated template database once per process.
async fn template() -> &'static str {
    static TEMPLATE: OnceCell<()> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let servers = TestServers::get();
            let mut admin = PgConnection::connect(&servers.postgres_url)
                .await
                .expect("connect to the test Postgres");
            sqlx::query(concat!("CREATE DATABASE ", "coderun_template"))
                .execute(&mut admin)
                .await
                .expect("create the template database");
            // The same step as `coderun-functions migrate`: the servers only check the schema.
            let pool = PgPool::connect(&servers.database_url(TEMPLATE_DB))
                .await
                .expect("connect to the template database");
            coderun_shared::db::migrate(&pool)
                .await
                .expect("migrate the template database");
            pool.close().await;
            admin.close().await.ok();
        })
        .await;
    TEMPLATE_DB
}

/// A fresh, migrated database for one test; returns its name.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!("t_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&TestServers::get().postgres_url)
        .await
        .expect("connect to the test Postgres");
    // Both names are ours (a UUID and a constant): nothing user-supplied reaches this SQL.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {template}"
    )))
    .execute(&mut admin)
    .await
    .expect("clone the template database");
    admin.close().await.ok();
    name
}

/// A fresh database with no schema at all (what the migrate step starts from); returns its name.
pub async fn empty_database() -> String {
    let name = format!("t_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&TestServers::get().postgres_url)
        .await
        .expect("connect to the test Postgres");
    // The name is ours (a UUID): nothing user-supplied reaches this SQL.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create an empty database");
    admin.close().await.ok();
    name
}

/// A fresh bucket name for one test. Short: s3s-fs keeps a multipart upload's metadata in one
/// file named after the base64 of bucket and key together, and a filename has 255 bytes — a
/// 34-character bucket and a dataset draft's key under a 63-character dataset name overflow it
/// (the upload fails with a 500), where `coderun` or a 14-character name leave room.
pub fn fresh_bucket() -> String {
    format!("t-{}", &Uuid::new_v4().simple().to_string()[..12])
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Vec::new()).await
}

/// A test app whose settings are the test defaults overridden by `overrides`.
pub async fn spawn_app_with(overrides: Vec<(&'static str, String)>) -> TestApp {
    let database = fresh_database().await;
    let mut all = test_settings(&database, &fresh_bucket());
    all.extend(overrides);
    let settings = Settings::with_overrides(all).expect("test settings are valid");
    let state = AppState::build(settings).await.expect("the app starts");
    TestApp {
        router: app::router(state.clone()),
        db: state.db.clone(),
        state,
        database,
    }
}

/// A response, buffered.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("body is UTF-8")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status, and returns the body parsed as JSON.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts an RFC 9457 problem with `status` and returns it.
    #[track_caller]
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "a refusal is a problem document"
        );
        let problem = self.json();
        assert_eq!(problem["status"], status);
        assert!(problem["type"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(problem["detail"].as_str().is_some_and(|t| !t.is_empty()));
        problem
    }
}

/// A request body.
pub enum Payload {
    Empty,
    Json(Value),
    Text(String),
    Raw(Vec<u8>, &'static str),
}

impl TestApp {
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        payload: Payload,
    ) -> TestResponse {
        self.send_with(method, uri, token, &[], payload).await
    }

    /// Like [`send`](Self::send), with extra request headers.
    pub async fn send_with(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        payload: Payload,
    ) -> TestResponse {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match payload {
            Payload::Empty => Body::empty(),
            Payload::Json(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&value).unwrap())
            }
            Payload::Text(text) => {
                request = request.header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
                Body::from(text)
            }
            Payload::Raw(bytes, content_type) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Body::from(bytes)
            }
        };
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("read the body");
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str, token: &str) -> TestResponse {
        self.send(Method::GET, uri, Some(token), Payload::Empty)
            .await
    }

    pub async fn delete(&self, uri: &str, token: &str) -> TestResponse {
        self.send(Method::DELETE, uri, Some(token), Payload::Empty)
            .await
    }

    pub async fn post(&self, uri: &str, token: &str, body: Value) -> TestResponse {
        self.send(Method::POST, uri, Some(token), Payload::Json(body))
            .await
    }

    pub async fn patch(&self, uri: &str, token: &str, body: Value) -> TestResponse {
        self.send(Method::PATCH, uri, Some(token), Payload::Json(body))
            .await
    }

    pub async fn put_text(&self, uri: &str, token: &str, text: &str) -> TestResponse {
        self.send(
            Method::PUT,
            uri,
            Some(token),
            Payload::Text(text.to_owned()),
        )
        .await
    }

    /// Logs in and returns the token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let response = self
            .send(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Payload::Json(serde_json::json!({"username": username, "password": password})),
            )
            .await;
        response.expect(200)["token"].as_str().unwrap().to_owned()
    }

    /// The seeded admin's token.
    pub async fn admin(&self) -> String {
        self.login("admin", "admin").await
    }

    /// A new user with `role`, created by the admin; returns (id, token).
    pub async fn user(&self, role: &str) -> (String, String) {
        let admin = self.admin().await;
        let username = format!("u{}", &Uuid::new_v4().simple().to_string()[..12]);
        let created = self
            .post(
                "/api/v1/users",
                &admin,
                serde_json::json!({"username": username, "password": "password-123", "role": role}),
            )
            .await
            .expect(201);
        let token = self.login(&username, "password-123").await;
        (created["id"].as_str().unwrap().to_owned(), token)
    }

    /// Creates a task and returns its JSON.
    pub async fn task(&self, token: &str, name: &str, language: &str) -> Value {
        self.post(
            "/api/v1/tasks",
            token,
            serde_json::json!({"name": name, "language": language}),
        )
        .await
        .expect(201)
    }

    /// Everything the API can store in Postgres, as one value: compare it before and after a
    /// refused request to prove nothing was stored.
    pub async fn snapshot(&self) -> Value {
        let query = "SELECT json_build_object(
            'users', (SELECT coalesce(json_agg(u ORDER BY u.username), '[]') FROM users u),
            'tasks', (SELECT coalesce(json_agg(t ORDER BY t.id), '[]') FROM tasks t),
            'files', (SELECT coalesce(json_agg(f ORDER BY f.task_id, f.path), '[]') FROM task_files f),
            'runs', (SELECT coalesce(json_agg(r ORDER BY r.id), '[]') FROM runs r),
            'run_events', (SELECT coalesce(json_agg(e ORDER BY e.id), '[]') FROM run_events e),
            'run_outputs', (SELECT coalesce(json_agg(o ORDER BY o.run_id, o.path), '[]') FROM run_outputs o),
            'snapshots', (SELECT coalesce(json_agg(s ORDER BY s.sha256), '[]') FROM snapshots s),
            'object_sweeps', (SELECT coalesce(json_agg(w ORDER BY w.id), '[]') FROM object_sweeps w),
            'datasets', (SELECT coalesce(json_agg(d ORDER BY d.name), '[]') FROM datasets d),
            'dataset_draft_files', (SELECT coalesce(json_agg(f ORDER BY f.dataset_id, f.path), '[]') FROM dataset_draft_files f),
            'dataset_versions', (SELECT coalesce(json_agg(v ORDER BY v.id), '[]') FROM dataset_versions v),
            'dataset_files', (SELECT coalesce(json_agg(f ORDER BY f.version_id, f.path), '[]') FROM dataset_files f),
            'dataset_uploads', (SELECT coalesce(json_agg(u ORDER BY u.id), '[]') FROM dataset_uploads u),
            'dataset_sweeps', (SELECT coalesce(json_agg(w ORDER BY w.id), '[]') FROM dataset_sweeps w),
            'pipelines', (SELECT coalesce(json_agg(p ORDER BY p.id), '[]') FROM pipelines p),
            'pipeline_versions', (SELECT coalesce(json_agg(v ORDER BY v.pipeline_id, v.version), '[]') FROM pipeline_versions v),
            'pipeline_runs', (SELECT coalesce(json_agg(r ORDER BY r.id), '[]') FROM pipeline_runs r),
            'pipeline_steps', (SELECT coalesce(json_agg(s ORDER BY s.pipeline_run_id, s.name), '[]') FROM pipeline_steps s),
            'pipeline_approvals', (SELECT coalesce(json_agg(a ORDER BY a.pipeline_run_id, a.stage), '[]') FROM pipeline_approvals a),
            'webhook_endpoints', (SELECT coalesce(json_agg(w ORDER BY w.id), '[]') FROM webhook_endpoints w),
            'webhook_events', (SELECT coalesce(json_agg(w ORDER BY w.id), '[]') FROM webhook_events w),
            'webhook_deliveries', (SELECT coalesce(json_agg(w ORDER BY w.id), '[]') FROM webhook_deliveries w),
            'webhook_attempts', (SELECT coalesce(json_agg(w ORDER BY w.id), '[]') FROM webhook_attempts w)
        )::text";
        let text: String = sqlx::query_scalar(query).fetch_one(&self.db).await.unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Everything the API can store anywhere: Postgres ([`snapshot`](Self::snapshot)), the
    /// runs stream's entries and every object key in the bucket.
    pub async fn stored(&self) -> Value {
        let entries: Vec<Value> = self
            .stream_entries()
            .await
            .into_iter()
            .map(|(id, fields)| json!({"id": id, "fields": fields}))
            .collect();
        json!({
            "db": self.snapshot().await,
            "stream": entries,
            "objects": self.objects("").await,
        })
    }

    /// The runs stream's entries (id and fields), oldest first.
    pub async fn stream_entries(&self) -> Vec<(String, HashMap<String, String>)> {
        self.state
            .redis
            .xrange_values(self.state.keys.stream(), "-", "+", None)
            .await
            .expect("XRANGE the runs stream")
    }

    /// The runs stream's length (XLEN).
    pub async fn stream_len(&self) -> u64 {
        self.state
            .redis
            .xlen(self.state.keys.stream())
            .await
            .expect("XLEN the runs stream")
    }

    /// The keys of every object below `prefix` in this test's bucket, sorted.
    pub async fn objects(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .state
            .storage
            .list(prefix)
            .await
            .expect("list the bucket")
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        keys.sort();
        keys
    }

    /// Publishes `files` as the next version of dataset `name` (created when missing) through
    /// the API, as the admin; returns the version (`v1`, …). The draft is replaced by `files`.
    pub async fn publish_dataset(&self, name: &str, files: &[(&str, &[u8])]) -> String {
        let admin = self.admin().await;
        let existing = self.get(&format!("/api/v1/datasets/{name}"), &admin).await;
        if existing.status == StatusCode::NOT_FOUND {
            self.post(
                "/api/v1/datasets",
                &admin,
                json!({"name": name, "title": format!("The {name} dataset")}),
            )
            .await
            .expect(201);
        } else {
            for file in existing.json()["draft"]["files"].as_array().unwrap() {
                let path = file["path"].as_str().unwrap();
                self.delete(&format!("/api/v1/datasets/{name}/files/{path}"), &admin)
                    .await;
            }
        }
        for (path, content) in files {
            let put = self
                .send(
                    Method::PUT,
                    &format!("/api/v1/datasets/{name}/files/{path}"),
                    Some(&admin),
                    Payload::Raw(content.to_vec(), "application/octet-stream"),
                )
                .await;
            assert!(put.status.is_success(), "{put:?}");
        }
        let published = self
            .post(
                &format!("/api/v1/datasets/{name}:publish"),
                &admin,
                json!({}),
            )
            .await
            .expect(201);
        published["version"].as_str().unwrap().to_owned()
    }

    /// Submits a run of the task with `body` and returns the run's JSON (asserting 202).
    pub async fn submit(&self, token: &str, task_id: &str, body: Value) -> Value {
        self.post(&format!("/api/v1/tasks/{task_id}/runs"), token, body)
            .await
            .expect(202)
    }
}
