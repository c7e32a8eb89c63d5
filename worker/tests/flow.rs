//! Runs from HTTP submit to their end, through the real stream, semaphore, worker and sandbox.

mod support;

use std::time::Duration;

use fred::prelude::*;
use serde_json::json;
use support::{Platform, platform};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_python_run_goes_from_submit_to_succeeded_with_its_log_and_outputs_stored() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let code = "import os\nprint('hello from the sandbox')\nprint('second line', flush=True)\n\
                open(os.path.join(os.environ['OUTPUT_DIR'], 'result.txt'), 'w').write('42')\n\
                os.makedirs(os.path.join(os.environ['OUTPUT_DIR'], 'sub'), exist_ok=True)\n\
                open(os.path.join(os.environ['OUTPUT_DIR'], 'sub', 'b.txt'), 'w').write('b')\n";
    let id = p.submit_python(code, json!({})).await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["reason"], serde_json::Value::Null);
    assert_eq!(
        Platform::phases(&run),
        ["queued", "dispatched", "pending", "running", "succeeded"]
    );
    assert!(run["started_at"].is_string() && run["finished_at"].is_string());

    let (lines, complete) = p.log(&id).await;
    assert_eq!(lines, ["hello from the sandbox", "second line"]);
    assert!(complete);
    let download = p
        .app
        .get(&format!("/api/v1/runs/{id}/log/download"), &p.token)
        .await;
    assert_eq!(download.status, 302);
    let url = download.header("location").unwrap().to_owned();
    let log = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert_eq!(log, "hello from the sandbox\nsecond line\n");

    let outputs = p
        .app
        .get(&format!("/api/v1/runs/{id}/outputs"), &p.token)
        .await
        .expect(200);
    let outputs = outputs["items"].as_array().unwrap();
    let paths: Vec<&str> = outputs
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["result.txt", "sub/b.txt"]);
    let url = outputs[0]["url"].as_str().unwrap();
    assert_eq!(reqwest::get(url).await.unwrap().text().await.unwrap(), "42");

    // The permit came back.
    support::wait_no_run_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_code_bundle_too_large_to_cache_is_spooled_to_disk_and_runs() {
    let work_dir = std::env::temp_dir().join(format!("coderun-spool-{}", uuid::Uuid::new_v4()));
    let p = platform(vec![("worker.work_dir", work_dir.display().to_string())]).await;
    let worker = p.worker("w").await;
    // 800 KB of hex digits: about 400 KB gzipped, above the worker's 256 KiB in-memory limit.
    let mut noise = String::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 800_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push_str(&format!("{x:016x}"));
    }
    let code = format!("NOISE = '{noise}'\nprint(len(NOISE))\n");
    let id = p.submit_python(&code, json!({})).await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (lines, _) = p.log(&id).await;
    assert_eq!(lines, [noise.len().to_string()]);
    // The spooled bundle is gone once unpacked.
    let spooled: Vec<_> = walk(&work_dir)
        .into_iter()
        .filter(|f| f.ends_with("code.tar.gz"))
        .collect();
    assert!(spooled.is_empty(), "{spooled:?}");
    worker.stop().await;
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn a_failing_program_reports_its_exit_code_and_its_stderr() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let id = p
        .submit_python(
            "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nsys.exit(3)\n",
            json!({}),
        )
        .await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["reason"], serde_json::Value::Null);
    let (lines, _) = p.log(&id).await;
    assert_eq!(lines, ["to stdout", "to stderr"]);
    worker.stop().await;
}

#[tokio::test]
async fn a_submission_may_name_its_own_command_and_spec() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let id = p
        .submit_python(
            "print('unused')\n",
            json!({"command": "echo \"$RUN_ID\" && pwd && ls", "spec": "medium"}),
        )
        .await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["spec"]["name"], "medium");
    let (lines, _) = p.log(&id).await;
    assert_eq!(lines[0], id);
    assert_eq!(lines[1], "/code");
    assert_eq!(&lines[2..], ["README.md", "main.py"]);
    worker.stop().await;
}

#[tokio::test]
async fn java_r_and_scala_run_in_their_runtimes() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    for (language, code_file, code) in [
        (
            "java",
            "Main.java",
            "public class Main { public static void main(String[] a) { System.out.println(\"hi from java\"); } }\n",
        ),
        ("r", "main.R", "cat('hi from r\\n')\n"),
        (
            "scala",
            "Main.scala",
            "object Main { def main(args: Array[String]): Unit = println(\"hi from scala\") }\n",
        ),
    ] {
        let task = p.app.task(&p.token, language, language).await;
        let task_id = task["id"].as_str().unwrap();
        p.app
            .put_text(
                &format!("/api/v1/tasks/{task_id}/files/{code_file}"),
                &p.token,
                code,
            )
            .await
            .expect(200);
        let run = p
            .app
            .submit(&p.token, task_id, json!({"spec": "medium"}))
            .await;
        let id = run["id"].as_str().unwrap();
        let run = p.wait_terminal(id, Duration::from_secs(120)).await;
        let (lines, _) = p.log(id).await;
        assert_eq!(run["status"], "succeeded", "{language}: {run} {lines:?}");
        assert!(
            lines.contains(&format!("hi from {language}")),
            "{language}: {lines:?}"
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn stopping_a_queued_run_cancels_it_and_it_never_launches() {
    let p = platform(vec![]).await;
    let id = p.submit_python("print('must not run')\n", json!({})).await;
    let stopped = p
        .app
        .post(&format!("/api/v1/runs/{id}/stop"), &p.token, json!({}))
        .await
        .expect(200);
    assert_eq!(stopped["status"], "canceled");
    let worker = p.worker("w").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = p.run(&id).await;
    assert_eq!(run["status"], "canceled");
    assert_eq!(run["reason"], "stopped_by_user");
    assert_eq!(Platform::phases(&run), ["queued", "canceled"]);
    assert_eq!(
        p.app.stream_len().await,
        1,
        "the entry was read and acknowledged, not re-added"
    );
    worker.stop().await;
}

#[tokio::test]
async fn stopping_a_running_run_ends_it_stopped_with_its_log_kept() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let id = p
        .submit_python(
            "import time\nprint('started', flush=True)\ntime.sleep(60)\nprint('never')\n",
            json!({}),
        )
        .await;
    p.wait_for(&id, T, |s| s == "running").await;
    // Wait for the first line to reach the live log.
    for _ in 0..100 {
        if !p.log(&id).await.0.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = p
        .app
        .post(&format!("/api/v1/runs/{id}/stop"), &p.token, json!({}))
        .await
        .expect(200);
    assert_eq!(stopping["status"], "stopping");
    let run = p.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "stopped", "{run}");
    assert_eq!(run["reason"], "stopped_by_user");
    let phases = Platform::phases(&run);
    assert_eq!(&phases[phases.len() - 2..], ["stopping", "stopped"]);
    let (lines, complete) = p.log(&id).await;
    assert_eq!(lines, ["started"]);
    assert!(complete);
    support::wait_no_run_permits(&worker.ctx).await;
    // Stopping again changes nothing.
    p.app
        .post(&format!("/api/v1/runs/{id}/stop"), &p.token, json!({}))
        .await
        .expect(200);
    assert_eq!(p.run(&id).await["status"], "stopped");
    worker.stop().await;
}

#[tokio::test]
async fn a_retry_runs_the_same_snapshot_again() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let id = p.submit_python("print('version 1')\n", json!({})).await;
    p.wait_terminal(&id, T).await;
    let task_id = p.run(&id).await["task_id"].as_str().unwrap().to_owned();
    p.app
        .put_text(
            &format!("/api/v1/tasks/{task_id}/files/main.py"),
            &p.token,
            "print('version 2')\n",
        )
        .await
        .expect(200);
    let retry = p
        .app
        .post(&format!("/api/v1/runs/{id}/retry"), &p.token, json!({}))
        .await
        .expect(202);
    let retry_id = retry["id"].as_str().unwrap();
    let run = p.wait_terminal(retry_id, T).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(
        p.log(retry_id).await.0,
        ["version 1"],
        "a retry runs the snapshot, not the edited task"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_queued_run_whose_stream_entry_was_lost_is_enqueued_again() {
    let p = platform(vec![]).await;
    let id = p.submit_python("print('found again')\n", json!({})).await;
    let entries = p.app.stream_entries().await;
    assert_eq!(entries.len(), 1);
    let stream = format!("{}:runs", p.settings().redis.prefix);
    let redis = &p.app.state.redis;
    let deleted: u64 = redis.xdel(&stream, entries[0].0.as_str()).await.unwrap();
    assert_eq!(deleted, 1);
    let worker = p.worker("w").await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(p.log(&id).await.0, ["found again"]);
    worker.stop().await;
}

#[tokio::test]
async fn poison_entries_are_dead_lettered() {
    let p = platform(vec![("queue.max_deliveries", "2".into())]).await;
    let redis = &p.app.state.redis;
    let prefix = p.settings().redis.prefix;
    let stream = format!("{prefix}:runs");

    // An entry that names no run.
    let _: String = redis
        .xadd(&stream, false, None, "*", vec![("garbage", "yes")])
        .await
        .unwrap();
    // A run whose entry keeps being delivered and never handed off (a consumer that dies
    // before acknowledging, three times over).
    let id = p.submit_python("print('never')\n", json!({})).await;
    let group = p.settings().queue.group;
    let _: () = redis
        .xgroup_create(&stream, &group, "0", true)
        .await
        .unwrap_or(());
    for ghost in ["ghost-1", "ghost-2", "ghost-3"] {
        let _: Value = redis
            .xreadgroup(&group, ghost, Some(10), None, false, &stream, ">")
            .await
            .unwrap();
        let pending: Vec<(String, String, u64, u64)> = redis
            .xpending(&stream, &group, ("-", "+", 10))
            .await
            .unwrap();
        for (entry, ..) in pending {
            let _: Value = redis
                .xclaim(
                    &stream, &group, ghost, 0, entry, None, None, None, false, false,
                )
                .await
                .unwrap();
        }
    }
    let worker = p.worker("w").await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["reason"], "dead_lettered");
    let dead: Vec<(String, std::collections::HashMap<String, String>)> = redis
        .xrange(format!("{prefix}:runs:dead"), "-", "+", None)
        .await
        .unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|(_, f)| f["run_id"] == id));
    assert!(dead.iter().any(|(_, f)| f["run_id"].is_empty()));
    // Both entries are acknowledged.
    let pending: (
        u64,
        Option<String>,
        Option<String>,
        Option<Vec<(String, String)>>,
    ) = redis.xpending(&stream, &group, ()).await.unwrap();
    assert_eq!(pending.0, 0);
    worker.stop().await;
}

#[tokio::test]
async fn the_sandbox_limits_end_runs_with_the_right_reasons() {
    let p = platform(vec![
        ("specs.small.wall_seconds", "3".into()),
        ("specs.small.memory_mib", "64".into()),
        ("specs.small.disk_mib", "8".into()),
        ("runs.log_max_bytes", "65536".into()),
    ])
    .await;
    let worker = p.worker("w").await;
    let cases = [
        (
            "a memory bomb",
            "x = 'a' * (512 * 1024 * 1024)\n",
            "oom_killed",
        ),
        (
            "an infinite loop",
            "while True:\n    pass\n",
            "deadline_exceeded",
        ),
        (
            "a log flood",
            "while True:\n    print('y' * 100)\n",
            "output_limit_exceeded",
        ),
        (
            "a program ignoring SIGTERM",
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n",
            "deadline_exceeded",
        ),
    ];
    let mut ids = Vec::new();
    for (what, code, _) in &cases {
        ids.push((what, p.submit_python(code, json!({})).await));
    }
    for ((what, id), (_, _, reason)) in ids.iter().zip(cases.iter()) {
        let run = p.wait_terminal(id, T).await;
        assert_eq!(run["status"], "failed", "{what}: {run}");
        assert_eq!(run["reason"], *reason, "{what}: {run}");
    }
    let flood = &ids[2].1;
    let run = p.run(flood).await;
    assert_eq!(run["log_truncated"], true);
    assert!(run["log_bytes"].as_i64().unwrap() <= 65536);
    support::wait_no_run_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_program_cannot_reach_the_network_or_the_hosts_secrets() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let code = "import os, socket\n\
        try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); print('network: open')\n\
        except OSError:\n    print('network: closed')\n\
        for path in ['/root', '/work', '/etc/shadow', '/home']:\n    print(path, os.path.exists(path))\n\
        print('secrets in env:', sorted(k for k in os.environ if k.startswith('CODERUN')))\n\
        print('uid', os.getuid() != 0)\n";
    let id = p.submit_python(code, json!({})).await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (lines, _) = p.log(&id).await;
    assert_eq!(
        lines,
        [
            "network: closed",
            "/root False",
            "/work False",
            "/etc/shadow False",
            "/home False",
            "secrets in env: []",
            "uid True"
        ]
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_read_that_times_out_is_idle_not_an_error() {
    let p = platform(vec![]).await;
    let queue = &p.app.state.queue;
    queue.ensure_group().await.unwrap();
    let started = std::time::Instant::now();
    let entries = queue
        .read_new(&p.app.state.redis, "idle-consumer", 8, true)
        .await
        .unwrap();
    assert_eq!(entries, []);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the read blocked for block_ms"
    );
}

#[tokio::test]
async fn stop_wins_in_every_phase_even_when_the_executing_worker_is_gone() {
    use coderun_shared::runs::{self, Change, RunStatus};
    let p = platform(vec![]).await;
    // A run left in each launched phase by a worker that then vanished.
    let mut ids = Vec::new();
    for phase in [
        RunStatus::Dispatched,
        RunStatus::Pending,
        RunStatus::Running,
    ] {
        let id = p.submit_python("print('never')\n", json!({})).await;
        let uuid: uuid::Uuid = id.parse().unwrap();
        let change = Change {
            worker: Some("vanished-worker".into()),
            executor: Some("local".into()),
            ..Change::by("worker:vanished-worker")
        };
        for step in [
            RunStatus::Dispatched,
            RunStatus::Pending,
            RunStatus::Running,
        ] {
            runs::transition(&p.app.db, uuid, step, &change)
                .await
                .unwrap();
            if step == phase {
                break;
            }
        }
        let stopping = p
            .app
            .post(&format!("/api/v1/runs/{id}/stop"), &p.token, json!({}))
            .await
            .expect(200);
        assert_eq!(stopping["status"], "stopping", "{phase:?}");
        ids.push(id);
    }
    // A live worker's reconciler finds their worker gone: stop wins over executor_lost.
    let _worker = p.worker("w").await;
    for id in &ids {
        let run = p.wait_terminal(id, T).await;
        assert_eq!(run["status"], "stopped", "{run}");
        assert_eq!(run["reason"], "stopped_by_user");
        let phases = Platform::phases(&run);
        assert_eq!(&phases[phases.len() - 2..], ["stopping", "stopped"]);
        assert!(!phases.contains(&"failed".to_owned()));
    }
}

#[tokio::test]
async fn a_run_that_fills_its_disk_ends_evicted_and_leaves_no_mount_behind() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    // Writes until the run's tmpfs (the small spec's 256 MiB) is full, then keeps trying.
    let code = "import os, time\n\
                f = open(os.path.join(os.environ['OUTPUT_DIR'], 'big'), 'wb')\n\
                while True:\n    try:\n        f.write(b'x' * (1 << 20)); f.flush()\n    \
                except OSError:\n        time.sleep(0.1)\n";
    let id = p.submit_python(code, json!({})).await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "evicted");
    let detail = run["events"].as_array().unwrap().last().unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("disk limit exceeded"), "{detail}");
    // The run's folder and its tmpfs are gone once the run is recorded.
    let work_dir = p.settings().worker.work_dir.join(&id);
    let deadline = std::time::Instant::now() + T;
    while work_dir.exists() {
        assert!(std::time::Instant::now() < deadline, "{work_dir:?} is left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(work_dir.to_str().unwrap()),
        "the run's tmpfs is still mounted"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_whose_work_dir_others_may_write_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let p = platform(vec![]).await;
    let mut settings = p.settings();
    let open = std::env::temp_dir().join(format!("coderun-open-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    settings.worker.work_dir = open.clone();
    let error = coderun_worker::Context::build(settings)
        .await
        .err()
        .expect("no worker in a folder others may write");
    let message = format!("{error:#}");
    assert!(message.contains("worker.work_dir"), "{message}");
    assert!(
        message.contains("writable by its group or others"),
        "{message}"
    );
    std::fs::remove_dir_all(open).unwrap();
}

#[tokio::test]
async fn a_run_printing_a_million_empty_lines_costs_bounded_redis_memory() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let id = p
        .submit_python("import sys\nsys.stdout.write('\\n' * 1000000)\n", json!({}))
        .await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    // The live log (kept for a while after the end) holds every line in few, small entries.
    let key = p.app.state.keys.live_log(id.parse().unwrap());
    let bytes: i64 = p
        .app
        .state
        .redis
        .custom(
            fred::cmd!("MEMORY"),
            vec!["USAGE", key.as_str(), "SAMPLES", "0"],
        )
        .await
        .unwrap();
    assert!(
        bytes < 2 * 1024 * 1024,
        "{bytes} bytes of Redis for the live log"
    );
    assert_eq!(
        p.app.state.live_log.len(id.parse().unwrap()).await.unwrap(),
        1_000_000
    );
    // The stored log pages through them exactly.
    let last = p
        .app
        .get(&format!("/api/v1/runs/{id}/log?page=10000"), &p.token)
        .await
        .expect(200);
    assert_eq!(last["total_lines"], 1_000_000);
    assert_eq!(last["lines"].as_array().unwrap().len(), 100);
    assert!(last["lines"].as_array().unwrap().iter().all(|l| l == ""));
    worker.stop().await;
}

#[tokio::test]
async fn the_workers_metrics_show_the_operators_numbers_after_a_real_run() {
    let p = platform(vec![]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let _worker = p.worker_process(
        &format!(
            "metrics-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        &[("CODERUN__WORKER__HTTP_BIND", bind.as_str())],
    );
    let id = p.submit_python("print('measured')\n", json!({})).await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let base = format!("http://{bind}");
    let http = reqwest::Client::new();
    for probe in ["/healthz", "/readyz"] {
        let status = http
            .get(format!("{base}{probe}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{probe}");
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in /metrics:\n{metrics}"))
    };
    // The run: launched once, by the local executor, and ended succeeded without a reason.
    assert_eq!(value("worker_launches_total{executor=\"local\"}"), 1.0);
    assert_eq!(
        value("worker_runs_ended_total{status=\"succeeded\",reason=\"none\"}"),
        1.0
    );
    assert!(value("worker_launch_duration_seconds_count{executor=\"local\"}") >= 1.0);
    assert!(value("worker_start_delay_seconds_count{executor=\"local\"}") >= 1.0);
    // The fleet, read at the scrape: nothing waits, the permit came back, the capacity is set.
    assert_eq!(value("worker_stream_lag"), 0.0);
    assert_eq!(value("worker_stream_pending"), 0.0);
    assert_eq!(
        value("worker_permits_capacity"),
        f64::from(p.settings().capacity.default)
    );
    let held = value("worker_permits_held");
    assert!(
        held <= 1.0,
        "only this worker's reservation may be held: {held}"
    );
    // The repairs, claims, dead letters and errors exist from the start, at zero here.
    assert_eq!(value("worker_janitor_claims_total"), 0.0);
    assert_eq!(value("worker_dead_letters_total"), 0.0);
    assert_eq!(value("worker_reconciler_repairs_total{kind=\"lost\"}"), 0.0);
    assert_eq!(
        value("worker_executor_errors_total{executor=\"local\",kind=\"launch_permanent\"}"),
        0.0
    );
}

/// A run whose code the worker holds already (the same starter code, a retry) records
/// `pending` and `running` in one commit; one whose code it fetches is `pending` on its own
/// while the code comes.
#[tokio::test]
async fn a_run_whose_code_the_worker_holds_records_pending_and_running_in_one_commit() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let code = "print('the same code twice')\n";
    let mut runs = Vec::new();
    for _ in 0..2 {
        let id = p.submit_python(code, json!({})).await;
        let run = p.wait_terminal(&id, T).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(
            Platform::phases(&run),
            ["queued", "dispatched", "pending", "running", "succeeded"]
        );
        assert_eq!(p.log(&id).await.0, ["the same code twice"]);
        runs.push((id, run));
    }
    let detail = |run: &serde_json::Value, phase: &str| {
        run["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["phase"] == phase)
            .unwrap()["detail"]
            .clone()
    };
    assert_eq!(detail(&runs[0].1, "pending"), "fetching the code");
    assert_eq!(detail(&runs[1].1, "pending"), "the code was at hand");
    // Rows written by one transaction carry its id.
    let mut commits = Vec::new();
    for (id, _) in &runs {
        let run_id: uuid::Uuid = id.parse().unwrap();
        let count: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT xmin::text) FROM run_events
             WHERE run_id = $1 AND phase IN ('pending', 'running')",
        )
        .bind(run_id)
        .fetch_one(&p.app.db)
        .await
        .unwrap();
        commits.push(count);
    }
    assert_eq!(commits, [2, 1]);
    worker.stop().await;
}
