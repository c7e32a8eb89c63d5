use coderun_shared::{config::Settings, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    tracing::info!("coderun-worker has no runs to consume yet; exiting");
    Ok(())
}
