//! `just bench`: load against a running coderun (the local stack), reporting what it measured.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = coderun_tests::bench::Options::parse();
    coderun_tests::bench::run(options).await
}
