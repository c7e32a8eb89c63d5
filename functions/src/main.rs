use clap::Parser;
use coderun_functions::cli::{self, Cli, Command};
use coderun_shared::{config::Settings, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command.unwrap_or(Command::Serve);
    // The contract needs no settings: it is printed even where none are configured.
    if let Command::Openapi = command {
        return cli::print_openapi();
    }
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    cli::run(command, settings).await
}
