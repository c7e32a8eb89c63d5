use clap::Parser;
use coderun_functions::cli::{self, Cli, Command};
use coderun_shared::{config::Settings, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    cli::run(cli.command.unwrap_or(Command::Serve), settings).await
}
