//! A worker killed at any moment loses no run and doubles none: each run ends exactly once and
//! its permit comes back. A run whose execution died with its worker is attempted again from
//! the same snapshot (`runs.max_attempts`, default 2), never while the first attempt's program
//! still runs; only a run with no attempt left fails `executor_lost`. The victims are real
//! `coderun-worker` processes; the survivor runs in-process.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Platform, platform, run_permits};

const T: Duration = Duration::from_secs(60);

fn count(phases: &[String], phase: &str) -> usize {
    phases.iter().filter(|p| *p == phase).count()
}

async fn wait_no_run_permits(ctx: &coderun_worker::Context) {
    for _ in 0..200 {
        if run_permits(ctx).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run permits still held: {:?}", run_permits(ctx).await);
}

#[tokio::test]
async fn a_worker_dying_between_permit_and_launch_leaves_the_run_to_another() {
    let p = platform(vec![]).await;
    let mut victim = p.worker_process(
        "victim-permit",
        &[("CODERUN__WORKER__CRASH_AT", "after_permit")],
    );
    let id = p.submit_python("print('ran once')\n", json!({})).await;
    assert!(
        victim.wait_exit(T).is_some(),
        "the victim crashes at its crash point"
    );
    assert_eq!(p.run(&id).await["status"], "queued");

    let survivor = p.worker("survivor").await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let phases = Platform::phases(&run);
    assert_eq!(
        phases,
        ["queued", "dispatched", "pending", "running", "succeeded"]
    );
    assert_eq!(p.log(&id).await.0, ["ran once"]);
    wait_no_run_permits(&survivor.ctx).await;
    survivor.stop().await;
}

#[tokio::test]
async fn a_worker_dying_between_launch_and_ack_leaves_its_run_to_a_second_attempt_that_ends_once() {
    let p = platform(vec![]).await;
    let mut victim = p.worker_process(
        "victim-launch",
        &[("CODERUN__WORKER__CRASH_AT", "after_launch")],
    );
    let id = p
        .submit_python(
            "import os\nprint('attempt', os.environ['RUN_ATTEMPT'])\n",
            json!({}),
        )
        .await;
    assert!(
        victim.wait_exit(T).is_some(),
        "the victim crashes at its crash point"
    );
    assert_eq!(p.run(&id).await["status"], "dispatched");

    let survivor = p.worker("survivor").await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let phases = Platform::phases(&run);
    assert_eq!(
        phases,
        [
            "queued",
            "dispatched",
            "queued",
            "dispatched",
            "pending",
            "running",
            "succeeded"
        ]
    );
    let requeued = &run["events"][2]["detail"];
    assert!(
        requeued.as_str().unwrap().starts_with("attempt 2 of 2"),
        "{requeued}"
    );
    assert_eq!(p.log(&id).await.0, ["attempt 2"]);
    wait_no_run_permits(&survivor.ctx).await;
    wait_no_pending(&survivor.ctx).await;
    // Nothing relaunches it later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(Platform::phases(&p.run(&id).await), phases);
    survivor.stop().await;
}

#[tokio::test]
async fn a_worker_dying_between_launch_and_ack_with_no_attempt_left_ends_its_run_once_as_executor_lost()
 {
    let p = platform(vec![("runs.max_attempts", "1".into())]).await;
    let mut victim = p.worker_process(
        "victim-launch",
        &[("CODERUN__WORKER__CRASH_AT", "after_launch")],
    );
    let id = p.submit_python("print('never started')\n", json!({})).await;
    assert!(
        victim.wait_exit(T).is_some(),
        "the victim crashes at its crash point"
    );
    assert_eq!(p.run(&id).await["status"], "dispatched");

    let survivor = p.worker("survivor").await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "executor_lost");
    let phases = Platform::phases(&run);
    assert_eq!(phases, ["queued", "dispatched", "failed"]);
    wait_no_run_permits(&survivor.ctx).await;
    // The victim's entry is claimed, found dispatched-and-ended, and acknowledged.
    wait_no_pending(&survivor.ctx).await;
    // Nothing relaunches it later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(Platform::phases(&p.run(&id).await), phases);
    survivor.stop().await;
}

async fn wait_no_pending(ctx: &coderun_worker::Context) {
    for _ in 0..100 {
        if ctx.queue.pending_count().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ctx.queue.pending_count().await.unwrap(), 0);
}

/// Live processes whose command line holds `marker`.
fn processes_with(marker: &str) -> String {
    let out = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(marker)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn a_run_killed_with_its_worker_runs_again_only_after_the_first_program_died() {
    let p = platform(vec![]).await;
    let mut victim = p.worker_process("victim-exec", &[]);
    // Only the first attempt's `sleep` has this in its command line (the shell's holds `$S`).
    let fraction = uuid::Uuid::new_v4().as_u128() % 1_000_000_000;
    let marker = format!("sleep 60.{fraction}");
    let command = format!(
        "if [ \"$RUN_ATTEMPT\" = 1 ]; then echo started; S=60; sleep $S.{fraction}; fi; \
         echo attempt $RUN_ATTEMPT"
    );
    let id = p
        .submit_python("print('unused')\n", json!({ "command": command }))
        .await;
    p.wait_for(&id, T, |s| s == "running").await;
    victim.kill9();

    let survivor = p.worker("survivor").await;
    // Never two executions at once: while the first program lives, no second `running`.
    let deadline = std::time::Instant::now() + T;
    let run = loop {
        let run = p.run(&id).await;
        let phases = Platform::phases(&run);
        let alive = processes_with(&marker);
        assert!(
            alive.is_empty() || count(&phases, "running") < 2,
            "the second attempt runs while the first program still lives ({alive}): {phases:?}"
        );
        if ["succeeded", "failed", "stopped", "canceled"].contains(&run["status"].as_str().unwrap())
        {
            break run;
        }
        assert!(std::time::Instant::now() < deadline, "still {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    let phases = Platform::phases(&run);
    assert_eq!(count(&phases, "running"), 2, "{phases:?}");
    assert_eq!(count(&phases, "succeeded"), 1);
    assert_eq!(count(&phases, "failed"), 0);
    assert_eq!(p.log(&id).await.0, ["attempt 2"]);
    assert!(processes_with(&marker).is_empty());
    wait_no_run_permits(&survivor.ctx).await;
    survivor.stop().await;
}

#[tokio::test]
async fn a_worker_killed_while_its_last_attempt_executes_takes_the_program_with_it_and_the_run_ends_once()
 {
    let p = platform(vec![("runs.max_attempts", "1".into())]).await;
    let mut victim = p.worker_process("victim-exec", &[]);
    let marker = format!("marker-{}", uuid::Uuid::new_v4().simple());
    let id = p
        .submit_python(
            "print('working', flush=True)\n",
            json!({"command": format!("echo started; sleep 60; echo {marker}")}),
        )
        .await;
    p.wait_for(&id, T, |s| s == "running").await;
    victim.kill9();

    let survivor = p.worker("survivor").await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "executor_lost");
    let phases = Platform::phases(&run);
    assert_eq!(count(&phases, "failed"), 1);
    assert_eq!(count(&phases, "running"), 1);
    wait_no_run_permits(&survivor.ctx).await;
    // The sandboxed program died with its worker (bubblewrap --die-with-parent), or at the
    // latest when a live worker reconciled the run and reaped its cgroups.
    let mut survivors = String::new();
    for _ in 0..100 {
        let out = std::process::Command::new("pgrep")
            .arg("-f")
            .arg(&marker)
            .output()
            .unwrap();
        survivors = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if survivors.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !survivors.is_empty() {
        let pids: Vec<&str> = survivors.split_whitespace().collect();
        let ps = std::process::Command::new("ps")
            .args([
                "-o",
                "pid,ppid,pgid,uid,stat,etimes,args",
                "-p",
                &pids.join(","),
            ])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&ps.stdout).into_owned();
        for pid in &pids {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
        panic!("the program outlived its worker:\n{listing}");
    }
    survivor.stop().await;
}
