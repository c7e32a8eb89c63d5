//! The memory suite of `coderun-bench` against a `coderun-functions` process of its own on the
//! test servers, for a quick look without the local stack. Ignored by default (it builds a task
//! at the size limit, which takes minutes): `cargo test --workspace --bins` first (for the
//! binary), then `cargo test --workspace --test api memory -- --ignored --nocapture`;
//! `CODERUN_MEMORY_TASK_MIB` picks the task's size (the default task limit otherwise).

use std::time::Duration;

use clap::Parser;
use coderun_tests::app::{fresh_bucket, fresh_database, test_settings};
use coderun_tests::bench::Options;

#[tokio::test]
#[ignore = "minutes long: a task at the size limit; run it with --ignored --nocapture"]
async fn the_api_process_stays_small_while_it_archives_and_submits_a_large_task() {
    let exe = std::env::current_exe().unwrap();
    let binary = std::env::var("CODERUN_FUNCTIONS_BIN").map_or_else(
        |_| {
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("coderun-functions")
        },
        Into::into,
    );
    assert!(binary.exists(), "build it first: {}", binary.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = std::process::Command::new(&binary);
    for (key, value) in test_settings(&fresh_database().await, &fresh_bucket()) {
        command.env(
            format!("CODERUN__{}", key.replace('.', "__").to_uppercase()),
            value,
        );
    }
    command
        .env("CODERUN__HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("CODERUN__DATABASE__MAX_CONNECTIONS", "16")
        .env("CODERUN__LOG__FILTER", "warn")
        .stdout(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    let pid_file = std::env::temp_dir().join(format!("coderun-functions-{}.pid", child.id()));
    std::fs::write(&pid_file, child.id().to_string()).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mib = std::env::var("CODERUN_MEMORY_TASK_MIB").unwrap_or_else(|_| "1024".into());
    let options = Options::parse_from([
        "coderun-bench",
        "--base-url",
        &base,
        "--suite",
        "memory",
        "--functions-pid-file",
        pid_file.to_str().unwrap(),
        "--memory-task-mib",
        &mib,
    ]);
    let result = coderun_tests::bench_memory::run(&options).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&pid_file);
    result.unwrap();
}
