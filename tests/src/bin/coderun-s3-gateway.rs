//! `coderun-s3-gateway`: the local S3 gateway in front of `s3s-fs`, for `just dev` — answers
//! browsers' CORS preflights for the app's origin(s) and forwards everything else unchanged,
//! `Host` included (see `coderun_tests::s3_gateway`).

use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "coderun-s3-gateway",
    about = "Answers CORS preflights for the app's origin(s) in front of an S3 server (s3s-fs) \
             and forwards every other request unchanged, Host header included"
)]
struct Options {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:59001")]
    listen: SocketAddr,
    /// The S3 server's address.
    #[arg(long, default_value = "127.0.0.1:59000")]
    upstream: SocketAddr,
    /// An origin allowed by CORS (repeatable; `*` allows any).
    #[arg(long = "origin", default_value = "http://127.0.0.1:8080")]
    origins: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let gateway = coderun_tests::s3_gateway::spawn(
        options.listen,
        coderun_tests::s3_gateway::Config {
            upstream: options.upstream,
            origins: options.origins.clone(),
        },
    )
    .await?;
    tracing::info!(listen = %gateway.address, upstream = %options.upstream, origins = ?options.origins, "S3 gateway ready");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
