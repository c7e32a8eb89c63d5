//! `just demo`: runs a small Python program on a running coderun (the local stack) and follows
//! it live — phases, log, log download and outputs. Exits non-zero unless the run succeeded.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let options = coderun_tests::demo::Options::parse();
    coderun_tests::demo::run(options).await
}
