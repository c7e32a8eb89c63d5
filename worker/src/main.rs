use coderun_shared::{config::Settings, telemetry};
use coderun_worker::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    let ctx = Context::build(settings).await?;
    coderun_worker::run(ctx, shutdown_signal()).await
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
