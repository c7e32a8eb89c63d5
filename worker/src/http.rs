//! The worker's small HTTP side, on `worker.http_bind` when set: `/metrics` (Prometheus, every
//! series of [`crate::metrics`] and the circuit breakers' state), `/healthz` (the process
//! answers: its liveness probe) and `/readyz`, which answers 503 naming the dependencies whose
//! breaker is open — while one is, this worker takes no new work.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::context::Context;

#[derive(Clone)]
struct Http {
    ctx: Context,
    metrics: PrometheusHandle,
}

pub fn router(ctx: Context) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/readyz", get(readyz))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Http {
            ctx,
            metrics: crate::metrics::handle(),
        })
}

async fn render_metrics(State(http): State<Http>) -> impl IntoResponse {
    crate::metrics::sample(&http.ctx).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        http.metrics.render(),
    )
}

async fn readyz(State(http): State<Http>) -> impl IntoResponse {
    let breakers: serde_json::Map<String, serde_json::Value> = http
        .ctx
        .resilience
        .snapshot()
        .into_iter()
        .map(|(dep, (state, _))| (dep.to_string(), state.into()))
        .collect();
    let open = http.ctx.resilience.open();
    let status = if open.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if open.is_empty() { "ready" } else { "waiting for dependencies" },
        "open": open.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        "breakers": breakers,
    });
    (status, axum::Json(body))
}

/// Serves until `shutdown` when `worker.http_bind` is set.
pub async fn serve(ctx: Context, shutdown: CancellationToken) {
    let bind = ctx.settings.worker.http_bind.trim().to_owned();
    if bind.is_empty() {
        return;
    }
    let listener = match tokio::net::TcpListener::bind(&bind).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%bind, error = %e, "cannot listen on worker.http_bind; no /metrics or /readyz");
            return;
        }
    };
    tracing::info!(%bind, "serving /metrics, /healthz and /readyz");
    let served = axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the worker's HTTP listener stopped");
    }
}
