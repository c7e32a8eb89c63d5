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
    let table = coderun_tests::bench_table::Table::default();
    let result = coderun_tests::bench_memory::run(&options, &table).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&pid_file);
    result.unwrap();
}

/// This process's resident memory field `field` (`VmRSS:`, `VmHWM:`), in MiB.
fn own_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// The same measure in process (the router called directly, the archive read chunk by chunk
/// and dropped): the growth of this test process's peak over its idle size. Quicker to build
/// than the binary; `CODERUN_MEMORY_TASK_MIB` sets the task's size (128 MiB by default).
#[tokio::test]
#[ignore = "a minute or more: a large task; run it with --ignored --nocapture"]
async fn archiving_and_submitting_a_large_task_grows_the_process_by_a_bounded_amount() {
    use axum::body::Body;
    use futures::StreamExt;
    use serde_json::json;
    use tower::ServiceExt;

    let mib: usize = std::env::var("CODERUN_MEMORY_TASK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let app = coderun_tests::app::spawn_app().await;
    let token = app.admin().await;
    let task = app.task(&token, "large", "python").await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let file = 10 * 1024 * 1024;
    for n in 0..(mib * 1024 * 1024).div_ceil(file) {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (n as u64 + 1);
        let text: String = (0..file)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[(state % 38) as usize])
            })
            .collect();
        app.put_text(
            &format!("/api/v1/tasks/{task_id}/files/data/part{n:04}.txt"),
            &token,
            &text,
        )
        .await
        .expect(201);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reset = || std::fs::write("/proc/self/clear_refs", "5").is_ok();
    assert!(reset(), "cannot reset this process's peak");
    let idle = own_mib("VmRSS:");

    let request = http::Request::get(format!("/api/v1/tasks/{task_id}/archive"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body().into_data_stream();
    let mut zip_bytes = 0usize;
    while let Some(chunk) = body.next().await {
        zip_bytes += chunk.unwrap().len();
    }
    let archive_peak = own_mib("VmHWM:");
    println!(
        "memory (in process): a {mib} MiB task: idle {idle:.1} MiB; archive of {:.0} MiB: peak {archive_peak:.1} MiB ({:+.1})",
        zip_bytes as f64 / 1048576.0,
        archive_peak - idle
    );
    reset();
    let idle = own_mib("VmRSS:");
    app.post(&format!("/api/v1/tasks/{task_id}/runs"), &token, json!({}))
        .await
        .expect(202);
    let submit_peak = own_mib("VmHWM:");
    println!(
        "memory (in process): submit: idle {idle:.1} MiB; peak {submit_peak:.1} MiB ({:+.1})",
        submit_peak - idle
    );
    assert!(archive_peak - idle < 128.0 && submit_peak - idle < 128.0);
}
