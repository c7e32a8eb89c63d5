//! The local S3 gateway: a small HTTP proxy in front of `s3s-fs` (the local stack's and the
//! tests' S3 server) that answers the CORS preflights `s3s-fs` does not, so a browser on the
//! app's origin can PUT dataset parts and GET files straight to presigned URLs.
//!
//! - `OPTIONS` from an allowed origin is answered here: `204` with
//!   `Access-Control-Allow-Origin`, `-Allow-Methods: GET, PUT, HEAD`, `-Allow-Headers` (the
//!   requested ones), `-Expose-Headers: ETag` and `-Max-Age`.
//! - Every other request goes to the S3 server unchanged — method, path, query and every
//!   header, the `Host` header included: a presigned SigV4 URL is signed for the gateway's
//!   address (`storage.public_endpoint`), and the S3 server checks the signature against the
//!   `Host` it receives, which is therefore the gateway's. Bodies stream both ways.
//!   Responses to an allowed origin get `Access-Control-Allow-Origin` and
//!   `-Expose-Headers: ETag`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse as _, Response};
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the gateway allows and where it forwards.
#[derive(Debug, Clone)]
pub struct Config {
    /// The S3 server's address (`host:port`).
    pub upstream: SocketAddr,
    /// The origins allowed by CORS (`http://127.0.0.1:8080`); `*` allows any.
    pub origins: Vec<String>,
}

impl Config {
    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == "*" || o == origin)
    }
}

/// A running gateway; it stops when dropped.
pub struct Gateway {
    /// Where it listens.
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Its base URL, `http://ADDRESS` — the `storage.public_endpoint` to sign for.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `listen` (port 0 picks a free one) and serves in the background.
pub async fn spawn(listen: SocketAddr, config: Config) -> anyhow::Result<Gateway> {
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(config)).await {
            tracing::error!(error = %e, "the S3 gateway stopped");
        }
    });
    Ok(Gateway { address, task })
}

/// The gateway as a router (every path goes to [`handle`]).
pub fn router(config: Config) -> Router {
    Router::new().fallback(handle).with_state(Arc::new(config))
}

/// The request's `Origin` when the configuration allows it.
fn allowed_origin(config: &Config, request: &Request) -> Option<HeaderValue> {
    let origin = request.headers().get(header::ORIGIN)?;
    config.allows(origin.to_str().ok()?).then(|| origin.clone())
}

async fn handle(State(config): State<Arc<Config>>, request: Request) -> Response {
    let origin = allowed_origin(&config, &request);
    if request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return preflight(origin, &request);
    }
    let mut response = match forward(config.upstream, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, "S3 gateway: the S3 server did not answer");
            (
                StatusCode::BAD_GATEWAY,
                format!("the S3 server did not answer: {e}\n"),
            )
                .into_response()
        }
    };
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("ETag"),
        );
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// Answers a CORS preflight: allowed for an allowed origin, `403` without CORS headers else.
fn preflight(origin: Option<HeaderValue>, request: &Request) -> Response {
    let Some(origin) = origin else {
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, PUT, HEAD"),
    );
    if let Some(requested) = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("ETag"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// Sends `request` to the S3 server on a connection of its own, as received (origin-form URI,
/// every header, `Host` included), streaming the bodies.
async fn forward(upstream: SocketAddr, request: Request) -> anyhow::Result<Response> {
    let stream = TcpStream::connect(upstream).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "S3 gateway: upstream connection");
        }
    });
    let (mut parts, body) = request.into_parts();
    if let Some(path) = parts.uri.path_and_query() {
        parts.uri = path.as_str().parse()?;
    }
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    Ok(response.map(Body::new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::TestServers;
    use coderun_shared::config::Settings;
    use coderun_shared::storage::Storage;

    fn upstream() -> SocketAddr {
        let servers = TestServers::get();
        servers
            .s3_endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn preflights_are_answered_for_the_app_origin_only() {
        let gateway = spawn(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Config {
                upstream: upstream(),
                origins: vec!["http://app.test".into()],
            },
        )
        .await
        .unwrap();
        let client = reqwest::Client::new();
        let url = format!("{}/bucket/key?partNumber=1&uploadId=x", gateway.url());
        let answer = client
            .request(Method::OPTIONS, &url)
            .header("origin", "http://app.test")
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let h = answer.headers();
        assert_eq!(h["access-control-allow-origin"], "http://app.test");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT, HEAD");
        assert_eq!(h["access-control-allow-headers"], "content-type");
        assert_eq!(h["access-control-expose-headers"], "ETag");

        let refused = client
            .request(Method::OPTIONS, &url)
            .header("origin", "http://evil.test")
            .header("access-control-request-method", "PUT")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(
            !refused
                .headers()
                .contains_key("access-control-allow-origin")
        );
    }

    #[tokio::test]
    async fn presigned_put_and_get_go_through_with_the_gateways_host() {
        let gateway = spawn(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Config {
                upstream: upstream(),
                origins: vec!["http://app.test".into()],
            },
        )
        .await
        .unwrap();
        let database = "unused".to_owned();
        let mut all = crate::app::test_settings(&database, &crate::app::fresh_bucket());
        all.push(("storage.public_endpoint", gateway.url()));
        let settings = Settings::with_overrides(all).unwrap();
        let storage = Storage::connect(&settings.storage).await.unwrap();

        let client = reqwest::Client::new();
        storage
            .put(
                "dir/hello.txt",
                "hello through the gateway\n".into(),
                "text/plain",
            )
            .await
            .unwrap();

        // A part of a multipart upload, as the browser sends it.
        let upload_id = storage.start_multipart("dir/big.bin").await.unwrap();
        let part = storage
            .presigned_part(
                "dir/big.bin",
                &upload_id,
                1,
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
        let answer = client
            .put(&part)
            .header("origin", "http://app.test")
            .body(vec![7u8; 1000])
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{:?}", answer.text().await);
        assert!(answer.headers().contains_key("etag"));
        assert!(
            storage
                .complete_multipart("dir/big.bin", &upload_id)
                .await
                .unwrap()
        );
        assert_eq!(storage.get("dir/big.bin").await.unwrap().len(), 1000);

        let get = storage.presigned_get("dir/hello.txt").await.unwrap();
        assert!(get.starts_with(&gateway.url()), "{get}");
        let answer = client
            .get(&get)
            .header("origin", "http://app.test")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer.headers()["access-control-allow-origin"],
            "http://app.test"
        );
        assert_eq!(answer.text().await.unwrap(), "hello through the gateway\n");

        // The signature covers the Host: the same URL sent to the S3 server directly (another
        // Host) is refused, so the gateway must forward the Host it receives.
        let wrong = get.replace(&gateway.url(), &format!("http://{}", upstream()));
        let direct = client.get(&wrong).send().await.unwrap();
        assert!(!direct.status().is_success());
    }
}
