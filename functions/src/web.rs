//! The built web app (`http.web_dir`: `index.html` + `assets/`), served at `/` on the API's
//! own origin, so no CORS is ever needed.
//!
//! The rules: the API's routes always win (the app is only the router's fallback), and paths
//! under `/api`, `/healthz`, `/readyz` and `/metrics` never reach the app, so an unknown API
//! path stays a problem+json 404; files under `/assets/` carry content hashes in their names
//! and are cached for a year as immutable, and a missing one is a 404 (never the app, which a
//! browser would then cache as a script); every other path gets its file when there is one, and
//! `index.html` otherwise, so deep links work; both revalidate on every use (`no-cache`). Files
//! are looked up by `ServeDir`, which refuses `..`, backslashes and encoded separators in any
//! segment, so no path leaves the folder.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use crate::error::ApiError;

/// Paths that belong to the API, with everything below them: never answered with the app.
const API_PREFIXES: [&str; 4] = ["/api", "/healthz", "/readyz", "/metrics"];

/// Where the content-hashed build output lives (Vite's `assets/`).
const ASSETS_PREFIX: &str = "/assets/";

const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// Why `http.web_dir` cannot be served.
#[derive(Debug, thiserror::Error)]
#[error(
    "http.web_dir is {dir}, which holds no index.html (build the app with `npm run build` in web/, \
     or leave http.web_dir empty to serve no app)"
)]
pub struct NoIndex {
    pub dir: String,
}

/// The app's folder, ready to serve.
#[derive(Clone)]
pub struct WebApp {
    assets: ServeDir,
    pages: ServeDir<ServeFile>,
}

impl WebApp {
    /// The app in `dir`, which must hold an `index.html`.
    pub fn open(dir: &Path) -> Result<Self, NoIndex> {
        let index = dir.join("index.html");
        if !index.is_file() {
            return Err(NoIndex {
                dir: dir.display().to_string(),
            });
        }
        Ok(Self::new(dir.to_owned(), index))
    }

    fn new(dir: PathBuf, index: PathBuf) -> Self {
        Self {
            assets: ServeDir::new(&dir)
                .append_index_html_on_directories(false)
                .precompressed_br()
                .precompressed_gzip(),
            // A folder (including `/`) is not a page: it falls back to index.html.
            pages: ServeDir::new(&dir)
                .append_index_html_on_directories(false)
                .precompressed_br()
                .precompressed_gzip()
                .fallback(
                    ServeFile::new(index)
                        .precompressed_br()
                        .precompressed_gzip(),
                ),
        }
    }

    /// Answers a request that no API route took.
    pub async fn serve(&self, request: Request) -> Response {
        let path = request.uri().path();
        if is_api_path(path) {
            return ApiError::NotFound("no such route".into()).into_response();
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return ApiError::MethodNotAllowed.into_response();
        }
        if path.starts_with(ASSETS_PREFIX) {
            let response = into_response(self.assets.clone().oneshot(request).await);
            if response.status() == StatusCode::NOT_FOUND {
                return ApiError::NotFound("no such file".into()).into_response();
            }
            return with_cache_control(response, IMMUTABLE);
        }
        with_cache_control(
            into_response(self.pages.clone().oneshot(request).await),
            NO_CACHE,
        )
    }
}

/// True for paths of the API's own (after percent-decoding, so `/%61pi/…` counts too).
pub fn is_api_path(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    [path, decoded.as_ref()].iter().any(|path| {
        API_PREFIXES.iter().any(|prefix| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    })
}

fn into_response<B>(result: Result<axum::http::Response<B>, std::convert::Infallible>) -> Response
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    match result {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// Sets `Cache-Control` on answers with content or a "not modified".
fn with_cache_control(mut response: Response, value: HeaderValue) -> Response {
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::is_api_path;

    #[test]
    fn api_paths_are_recognised_with_everything_below_them() {
        for path in [
            "/api",
            "/api/",
            "/api/v1/nope",
            "/healthz",
            "/readyz/x",
            "/metrics",
            "/%61pi/v1/x",
        ] {
            assert!(is_api_path(path), "{path}");
        }
        for path in [
            "/",
            "/apis",
            "/tasks/1",
            "/healthzz",
            "/assets/api.js",
            "/metricsx",
        ] {
            assert!(!is_api_path(path), "{path}");
        }
    }
}
