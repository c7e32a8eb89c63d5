//! The first line's path: a hello-world run's phases, recorded while the worker fetches the
//! code and prepares the sandbox, still appear in order; and (ignored, run by hand) how long
//! each stage of a hello-world run takes.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Platform, platform};

const T: Duration = Duration::from_secs(60);

fn at(run: &Value, phase: &str) -> chrono::DateTime<chrono::Utc> {
    run["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["phase"] == phase)
        .unwrap_or_else(|| panic!("no {phase} event: {run}"))["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn phases_recorded_alongside_the_fetch_and_the_sandbox_setup_stay_in_order() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    // The same code three times: the first run fetches it, the others find it in the worker's
    // cache of bundles; every one shows the same phases in the same order, its log and exit.
    for _ in 0..3 {
        let id = p.submit_python("print('hello, world')\n", json!({})).await;
        let run = p.wait_terminal(&id, T).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(
            Platform::phases(&run),
            ["queued", "dispatched", "pending", "running", "succeeded"]
        );
        let times: Vec<_> = ["queued", "dispatched", "pending", "running", "succeeded"]
            .iter()
            .map(|phase| at(&run, phase))
            .collect();
        assert!(times.is_sorted(), "{run}");
        let (lines, complete) = p.log(&id).await;
        assert_eq!(lines, ["hello, world"]);
        assert!(complete);
    }
    // A bundle that differs is fetched, not taken from the cache.
    let id = p.submit_python("print('another')\n", json!({})).await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(p.log(&id).await.0, ["another"]);
    support::wait_no_run_permits(&worker.ctx).await;
    worker.stop().await;
}

/// `cargo test --workspace --test latency -- --ignored --nocapture`: submit → succeeded of
/// hello-world Python, split by the run's events.
#[tokio::test]
#[ignore]
async fn hello_world_stage_timings() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let rounds = 30;
    let mut stages: Vec<[f64; 5]> = Vec::new();
    for _ in 0..rounds {
        let id = p.submit_python("print('hello, world')\n", json!({})).await;
        let run = p.wait_terminal(&id, T).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let ms = |a: &str, b: &str| (at(&run, b) - at(&run, a)).as_seconds_f64() * 1e3;
        stages.push([
            ms("queued", "dispatched"),
            ms("dispatched", "pending"),
            ms("pending", "running"),
            ms("running", "succeeded"),
            ms("queued", "succeeded"),
        ]);
    }
    let names = [
        "queued -> dispatched",
        "dispatched -> pending",
        "pending -> running",
        "running -> succeeded",
        "queued -> succeeded",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = stages.iter().map(|s| s[i]).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "{name:<24} p50 {:>7.2} ms   p90 {:>7.2} ms",
            v[v.len() / 2],
            v[v.len() * 9 / 10]
        );
    }
    worker.stop().await;
}
