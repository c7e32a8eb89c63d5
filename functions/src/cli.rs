//! The functions binary's commands: serve (the default), migrate (the deploy step that brings
//! the database schema up to date; servers only check it), create-user for operators, and
//! openapi, which prints the API's contract for the web app's generated types.

use clap::{Parser, Subcommand};
use coderun_shared::config::Settings;
use coderun_shared::domain::{NewPassword, Role, Username};
use coderun_shared::{db, users};

use crate::app;
use crate::state::AppState;

#[derive(Parser)]
#[command(name = "coderun-functions", about = "The coderun HTTP API")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the API (the default): under Lambda when AWS_LAMBDA_RUNTIME_API is set, otherwise
    /// on http.bind.
    Serve,
    /// Apply the pending database migrations and exit. Run it before starting (or updating)
    /// the servers, which refuse a database whose schema is older than they are: a Kubernetes
    /// Job (infra/k8s), a deploy step before the Lambda is updated (infra/sam), `just dev`.
    Migrate,
    /// Create a user, reading the password from the CODERUN_NEW_PASSWORD environment variable
    /// (the first admin of a fresh installation).
    CreateUser {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Print the OpenAPI document (JSON) and exit; needs no configuration or servers. The web
    /// app keeps a copy in web/openapi.json (refresh it with
    /// `cargo run -q -p coderun-functions -- openapi > web/openapi.json`).
    Openapi,
}

/// Prints the OpenAPI document, as `GET /api/v1/openapi.json` serves it, pretty-printed.
pub fn print_openapi() -> anyhow::Result<()> {
    print!("{}", crate::openapi::pretty_json()?);
    Ok(())
}

fn parse_role(raw: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|_| "role must be student, teacher or admin".to_owned())
}

/// Runs `command` with `settings`.
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    if let Command::Openapi = command {
        return print_openapi();
    }
    if let Command::Migrate = command {
        return migrate(&settings).await;
    }
    let state = AppState::build(settings).await?;
    match command {
        Command::Serve if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => {
            lambda_http::run(app::router(state))
                .await
                .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
        }
        Command::Serve => {
            let bind = state.settings.http.bind;
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {bind} (http.bind): {e}"))?;
            tracing::info!(%bind, "coderun API listening");
            Ok(app::serve(listener, app::router(state), app::shutdown_signal()).await?)
        }
        Command::CreateUser { username, role } => {
            let username = Username::parse(&username).map_err(|e| anyhow::anyhow!(e))?;
            let password = std::env::var("CODERUN_NEW_PASSWORD").map_err(|_| {
                anyhow::anyhow!("set CODERUN_NEW_PASSWORD to the new user's password")
            })?;
            let password = NewPassword::parse(&password).map_err(|e| anyhow::anyhow!(e))?;
            let hash = state.hash_password(password.as_str().to_owned()).await?;
            let user = users::create(&state.db, &username, &hash, role).await?;
            println!(
                "created user {} ({:?}) with id {}",
                user.username, user.role, user.id
            );
            Ok(())
        }
        Command::Openapi => print_openapi(),
        Command::Migrate => migrate(&state.settings).await,
    }
}

/// The migrate step: applies what is pending, then checks the result as a server would.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = db::connect(&settings.database).await?;
    db::migrate(&pool).await?;
    db::check_schema(&pool).await?;
    let latest = db::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    tracing::info!(version = latest, "database schema is current");
    println!("database schema is current (migration {latest})");
    pool.close().await;
    Ok(())
}
