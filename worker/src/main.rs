use clap::Parser;
use coderun_shared::{config::Settings, telemetry};
use coderun_worker::Context;
use coderun_worker::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    match cli.command.unwrap_or(Command::Run) {
        Command::PrintJob { run_id } => {
            print!("{}", cli::print_job(&settings, run_id).await?);
            Ok(())
        }
        Command::Run => {
            telemetry::init(&settings.log);
            let ctx = Context::build(settings).await?;
            coderun_worker::run(ctx, shutdown_signal()).await
        }
    }
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
