//! `coderun-e2e-stack`: a whole coderun platform on free ports for the web app's end-to-end
//! tests. Prints one JSON line when ready, then obeys `api-stop` / `api-start` on stdin, and
//! exits with every server when stdin closes or on SIGTERM/SIGINT (see
//! `coderun_tests::e2e_stack`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = coderun_tests::e2e_stack::Options::parse();
    coderun_tests::e2e_stack::run(options).await
}
