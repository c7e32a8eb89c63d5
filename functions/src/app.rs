//! The one router every host serves (Lambda or a plain HTTP server), its middleware, and the
//! plain server with graceful shutdown.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Request};
use axum::http::HeaderName;
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::openapi::{self, ServedDocument};
use crate::routes;
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route, with request ids, tracing, metrics and panic-to-500 around them, and the
/// OpenAPI document built from the same route declarations.
pub fn router(state: AppState) -> Router {
    let (api, document) = routes::api(&state.settings.limits).split_for_parts();
    let document = openapi::finish(document, &state.settings);
    let document = ServedDocument::new(&document).expect("the OpenAPI document serializes");
    let web = state.web.clone();
    api
        // What no route takes is the web app's, when there is one (it keeps API paths 404).
        .fallback(move |request: Request| {
            let web = web.clone();
            async move {
                match web {
                    Some(web) => web.serve(request).await,
                    None => ApiError::NotFound("no such route".into()).into_response(),
                }
            }
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(Extension(document))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::Internal(anyhow::anyhow!(
                "a handler panicked"
            )))
        }))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    uri = %request.uri().path(),
                    request_id = %request_id,
                    user_id = tracing::field::Empty,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
        ]))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in flight finish
/// (at most 30 s). Each request carries its socket peer (`ConnectInfo`), the client address of
/// the login limits when no trusted gateway header names one.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = tx.send(());
    });
    tokio::select! {
        result = server => result,
        _ = async { let _ = rx.await; tokio::time::sleep(Duration::from_secs(30)).await } => {
            tracing::warn!("requests still in flight 30 s after shutdown; stopping anyway");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
