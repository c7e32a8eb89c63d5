//! The built web app served at `/` (`http.web_dir`), beside an API it never shadows.

use std::path::{Path, PathBuf};

use coderun_functions::state::AppState;
use coderun_shared::config::Settings;
use coderun_tests::app::{
    Payload, TestApp, fresh_bucket, fresh_database, spawn_app, spawn_app_with, test_settings,
};
use http::Method;

const INDEX: &str = "<!doctype html><title>coderun</title><div id=app></div>";
const SCRIPT: &str = "console.log('app')";
const SECRET: &str = "the secret beside the app folder";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A temporary folder holding `secret.txt` and `web/` (the app: index.html, a hashed script,
/// a favicon, and files named like API routes, which must never be served).
struct WebDir {
    root: PathBuf,
}

impl WebDir {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("coderun-web-{}", uuid::Uuid::new_v4()));
        let web = root.join("web");
        for dir in ["assets", "api/v1", "sub"] {
            std::fs::create_dir_all(web.join(dir)).unwrap();
        }
        for (path, content) in [
            ("index.html", INDEX),
            ("assets/index-4f3a9c1b.js", SCRIPT),
            ("favicon.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>"),
            ("api/v1/languages", "shadowed"),
            ("api/v1/nope", "shadowed"),
            ("healthz", "shadowed"),
            ("metrics", "shadowed"),
            ("sub/page.txt", "a page"),
        ] {
            std::fs::write(web.join(path), content).unwrap();
        }
        std::fs::write(root.join("secret.txt"), SECRET).unwrap();
        Self { root }
    }

    fn web(&self) -> PathBuf {
        self.root.join("web")
    }
}

impl Drop for WebDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn app_serving(dir: &Path) -> TestApp {
    spawn_app_with(vec![("http.web_dir", dir.display().to_string())]).await
}

async fn get(app: &TestApp, uri: &str) -> coderun_tests::app::TestResponse {
    app.send(Method::GET, uri, None, Payload::Empty).await
}

#[tokio::test]
async fn the_app_is_served_at_the_root_and_revalidated_on_every_use() {
    let dir = WebDir::new();
    let app = app_serving(&dir.web()).await;
    for uri in ["/", "/index.html"] {
        let response = get(&app, uri).await;
        assert_eq!(response.status, 200, "{uri}");
        assert_eq!(response.text(), INDEX, "{uri}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{uri}: {:?}",
            response.headers
        );
        assert_eq!(response.header("cache-control"), Some("no-cache"), "{uri}");
    }

    // Revalidation: the same Last-Modified back gives a 304 without a body.
    let first = get(&app, "/").await;
    let modified = first.header("last-modified").expect("a Last-Modified");
    let again = app
        .send_with(
            Method::GET,
            "/",
            None,
            &[("if-modified-since", modified)],
            Payload::Empty,
        )
        .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    // HEAD answers like GET, without the body.
    let head = app.send(Method::HEAD, "/", None, Payload::Empty).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn hashed_assets_are_cached_for_a_year_as_immutable() {
    let dir = WebDir::new();
    let app = app_serving(&dir.web()).await;
    let response = get(&app, "/assets/index-4f3a9c1b.js").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), SCRIPT);
    assert_eq!(response.header("cache-control"), Some(IMMUTABLE));
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.contains("javascript")),
        "{:?}",
        response.headers
    );
}

#[tokio::test]
async fn a_missing_asset_is_a_404_and_never_the_app() {
    let dir = WebDir::new();
    let app = app_serving(&dir.web()).await;
    for uri in ["/assets/index-00000000.js", "/assets/", "/assets/sub/x.css"] {
        let response = get(&app, uri).await;
        response.problem(404);
        assert_eq!(response.header("cache-control"), None, "{uri}");
    }
}

#[tokio::test]
async fn deep_links_and_other_paths_without_a_file_get_the_app() {
    let dir = WebDir::new();
    let app = app_serving(&dir.web()).await;
    for uri in [
        "/tasks",
        "/tasks/0b6f1c9e-7c3f-4b8e-9d1a-2f3e4d5c6b7a/files/src/main.py",
        "/runs/abc?tab=log",
        "/sub",
        "/sub/",
        "/apis",
        "/healthz-not",
    ] {
        let response = get(&app, uri).await;
        assert_eq!(response.status, 200, "{uri}");
        assert_eq!(response.text(), INDEX, "{uri}");
        assert_eq!(response.header("cache-control"), Some("no-cache"), "{uri}");
    }
    // A file that exists is itself, revalidated like the page.
    let favicon = get(&app, "/favicon.svg").await;
    assert_eq!(favicon.status, 200);
    assert!(favicon.text().starts_with("<svg"));
    assert_eq!(favicon.header("cache-control"), Some("no-cache"));
    assert_eq!(get(&app, "/sub/page.txt").await.text(), "a page");
}

#[tokio::test]
async fn the_api_and_operations_paths_are_never_shadowed_by_the_app() {
    let dir = WebDir::new();
    let app = app_serving(&dir.web()).await;

    // Real routes answer as routes, although the folder holds files of the same names.
    get(&app, "/api/v1/languages").await.problem(401);
    assert_eq!(get(&app, "/healthz").await.expect(200)["status"], "ok");
    let metrics = get(&app, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_ne!(metrics.text(), "shadowed");
    assert!(
        get(&app, "/api/v1/openapi.json").await.expect(200)["paths"].is_object(),
        "the OpenAPI document"
    );

    // Unknown paths of the API stay problem+json 404s, whatever the folder holds.
    for uri in [
        "/api",
        "/api/",
        "/api/v1/nope",
        "/api/v1/no/such/route",
        "/api/v2/tasks",
        "/healthz/extra",
        "/readyz/x",
        "/metrics/x",
        "/%61pi/v1/nope",
    ] {
        let response = get(&app, uri).await;
        let problem = response.problem(404);
        assert_eq!(problem["detail"], "no such route", "{uri}");
    }
    // Writes to the API's unknown paths too; writes anywhere else are not allowed.
    let token = app.login("demo", "demo").await;
    app.post("/api/v1/nope", &token, serde_json::json!({}))
        .await
        .problem(404);
    app.send(Method::POST, "/", None, Payload::Empty)
        .await
        .problem(405);
    app.send(Method::DELETE, "/tasks/x", None, Payload::Empty)
        .await
        .problem(405);
}

#[tokio::test]
async fn path_traversal_never_leaves_the_app_folder() {
    let dir = WebDir::new();
    let app = app_serving(&dir.web()).await;
    for uri in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/..%2fsecret.txt",
        "/..%2Fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/%252e%252e/secret.txt",
        &dir.root.join("secret.txt").display().to_string(),
    ] {
        let response = get(&app, uri).await;
        let body = String::from_utf8_lossy(&response.body);
        assert!(!body.contains(SECRET), "{uri} escaped the folder");
        assert!(
            response.status == 200 && body == INDEX || response.status.is_client_error(),
            "{uri}: {} {body}",
            response.status
        );
    }
}

#[tokio::test]
async fn without_a_web_dir_the_root_is_an_unknown_route() {
    let app = spawn_app().await;
    for uri in ["/", "/index.html", "/tasks/x", "/assets/index.js"] {
        get(&app, uri).await.problem(404);
    }
}

#[tokio::test]
async fn a_web_dir_without_index_html_stops_the_start_with_a_clear_message() {
    let dir = WebDir::new();
    let database = fresh_database().await;
    let mut settings = test_settings(&database, &fresh_bucket());
    settings.push((
        "http.web_dir",
        dir.root.join("missing").display().to_string(),
    ));
    let settings = Settings::with_overrides(settings).unwrap();
    let Err(error) = AppState::build(settings).await else {
        panic!("the app started without an index.html");
    };
    let message = format!("{error:#}");
    assert!(
        message.contains("http.web_dir") && message.contains("index.html"),
        "{message}"
    );
}
