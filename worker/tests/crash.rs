//! A worker killed at any moment loses no run and doubles none: each run ends exactly once and
//! its permit comes back. A run whose execution died with its worker is attempted again from
//! the same snapshot (`runs.max_attempts`, default 2), never while the first attempt's program
//! still runs; only a run with no attempt left fails `executor_lost`. The victims are real
//! `coderun-worker` processes; the survivor runs in-process.
//!
//! A worker hands entries off in batches; the `batch_*` tests crash one inside a batch (against
//! the stand-in Kubernetes API, whose Jobs outlive their worker and count the launches) and
//! show that every run of the batch still runs exactly once, within capacity.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use coderun_tests::kube::{NAMESPACE as NS, StandIn};
use coderun_worker::executor::kubernetes::job;
use serde_json::json;
use support::{Platform, kubernetes_env, kubernetes_settings, platform, wait_no_run_permits};

const T: Duration = Duration::from_secs(60);

fn count(phases: &[String], phase: &str) -> usize {
    phases.iter().filter(|p| *p == phase).count()
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

/// Runs of a batch test, the fleet's capacity, and the victim's batch (the victim reads
/// `VICTIM_BATCH` entries at once; the rest wait in the stream for the survivor).
const BATCH_RUNS: usize = 10;
const BATCH_CAPACITY: usize = 8;
const VICTIM_BATCH: &str = "6";

/// What a batch test saw: the most executions alive at once, the most permits held at once.
struct Peaks {
    executing: AtomicUsize,
    permits: AtomicUsize,
}

/// A victim worker process reads a batch of runs and crashes at `point` inside its hand-off;
/// a survivor takes over. Every run ends `succeeded` exactly once, each with one Job (created
/// once, or re-created idempotently: the stand-in holds one Job per run) and at most one
/// `dispatched`; no run is attempted twice; no entry stays pending; no permit stays held; and
/// neither the permits held nor the executions alive ever exceed the capacity.
async fn batch_crash(point: &str) {
    let kube = Arc::new(StandIn::start().await);
    let mut overrides = kubernetes_settings(kube.kubeconfig());
    overrides.push(("capacity.default", BATCH_CAPACITY.to_string()));
    overrides.push(("kubernetes.creates_per_second", "0".into()));
    let p = platform(overrides).await;
    // Queued before any worker exists, so the victim's first read is a whole batch.
    let mut ids = Vec::new();
    for i in 0..BATCH_RUNS {
        ids.push(p.submit_python(&format!("print({i})\n"), json!({})).await);
    }
    let env = kubernetes_env(kube.kubeconfig());
    let mut extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.push(("CODERUN__KUBERNETES__CREATES_PER_SECOND", "0"));
    extra.push(("CODERUN__QUEUE__READ_BATCH", VICTIM_BATCH));
    extra.push(("CODERUN__WORKER__CRASH_AT", point));
    let victim_name = format!(
        "victim-{point}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut victim = p.worker_process(&victim_name, &extra);
    assert!(
        victim.wait_exit(T).is_some(),
        "the victim crashes at its crash point {point}"
    );
    let db = p.app.state.db.clone();
    let statuses = |db: sqlx::PgPool, ids: Vec<uuid::Uuid>| async move {
        sqlx::query_as::<_, (uuid::Uuid, String)>("SELECT id, status FROM runs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&db)
            .await
            .unwrap()
    };
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse().unwrap()).collect();
    let victim_runs: Vec<(uuid::Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, worker FROM runs WHERE id = ANY($1) AND worker IS NOT NULL")
            .bind(&uuids)
            .fetch_all(&db)
            .await
            .unwrap();
    let jobs_at_crash = kube.jobs(NS).len();
    match point {
        // Nothing exists yet: the batch's runs are all queued.
        "after_permit" => assert_eq!(jobs_at_crash, 0),
        // Some Jobs exist, their runs still queued.
        "amid_launches" => assert!(jobs_at_crash >= 3, "{jobs_at_crash} Jobs"),
        "before_dispatched" => assert_eq!(jobs_at_crash, 6),
        // The batch is dispatched, its entries unacknowledged.
        _ => assert_eq!(jobs_at_crash, 6),
    }
    let dispatched_at_crash = victim_runs.len();
    match point {
        "after_launch" | "before_ack" => assert_eq!(dispatched_at_crash, 6, "one statement"),
        _ => assert_eq!(dispatched_at_crash, 0),
    }
    assert_eq!(
        p.app.state.queue.pending_count().await.unwrap(),
        6,
        "the whole batch stays pending on the dead victim"
    );

    // The survivor, watched: the permits held and the executions alive (a Job whose run has
    // not ended), sampled throughout; the test plays the kubelet and ends each pod once its
    // run was handed off.
    let peaks = Arc::new(Peaks {
        executing: AtomicUsize::new(0),
        permits: AtomicUsize::new(0),
    });
    let done = Arc::new(AtomicBool::new(false));
    let survivor = p.worker("survivor").await;
    let sampler = {
        let (peaks, done, ctx) = (peaks.clone(), done.clone(), survivor.ctx.clone());
        let (kube, db, uuids) = (kube.clone(), db.clone(), uuids.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let now = statuses(db.clone(), uuids.clone()).await;
                let ended: HashSet<uuid::Uuid> = now
                    .iter()
                    .filter(|(_, s)| {
                        ["succeeded", "failed", "stopped", "canceled"].contains(&s.as_str())
                    })
                    .map(|(id, _)| *id)
                    .collect();
                let executing = uuids
                    .iter()
                    .filter(|id| {
                        !ended.contains(id) && kube.job(NS, &job::job_name(**id)).is_some()
                    })
                    .count();
                peaks.executing.fetch_max(executing, Ordering::SeqCst);
                let held = ctx.permits.in_use().await.unwrap() as usize;
                peaks.permits.fetch_max(held, Ordering::SeqCst);
                // The kubelet: a handed-off run's pod runs to its end.
                for (id, status) in &now {
                    if ["dispatched", "pending", "running"].contains(&status.as_str())
                        && let Some(pod) = kube.pod_of_job(NS, &job::job_name(*id))
                    {
                        kube.set_pod_succeeded(NS, &pod);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for id in &ids {
        let run = p.wait_terminal(id, T).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let phases = Platform::phases(&run);
        assert!(count(&phases, "dispatched") <= 1, "{phases:?}");
        assert_eq!(count(&phases, "succeeded"), 1, "{phases:?}");
        assert_eq!(
            count(&phases, "queued"),
            1,
            "never attempted again: {phases:?}"
        );
        assert_eq!(run["attempt"], 1, "{run}");
    }
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let jobs: HashSet<String> = kube
        .jobs(NS)
        .into_iter()
        .map(|j| j.metadata.name.unwrap_or_default())
        .collect();
    let expected: HashSet<String> = uuids.iter().map(|id| job::job_name(*id)).collect();
    assert_eq!(jobs, expected, "one Job per run");
    assert!(
        peaks.executing.load(Ordering::SeqCst) <= BATCH_CAPACITY,
        "{} executions at once with capacity {BATCH_CAPACITY}",
        peaks.executing.load(Ordering::SeqCst)
    );
    assert!(
        peaks.permits.load(Ordering::SeqCst) <= BATCH_CAPACITY,
        "{} permits at once with capacity {BATCH_CAPACITY}",
        peaks.permits.load(Ordering::SeqCst)
    );
    wait_no_run_permits(&survivor.ctx).await;
    wait_no_pending(&survivor.ctx).await;
    // Nothing relaunches anything later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(kube.jobs(NS).len(), BATCH_RUNS);
    for id in &ids {
        assert_eq!(p.run(id).await["status"], "succeeded");
    }
    survivor.stop().await;
}

// The stand-in serves from this process while the test blocks waiting for the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_a_worker_dying_once_its_batch_holds_permits_loses_and_doubles_nothing() {
    batch_crash("after_permit").await;
}

// The stand-in serves from this process while the test blocks waiting for the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_a_worker_dying_after_some_of_its_batch_launched_loses_and_doubles_nothing() {
    batch_crash("amid_launches").await;
}

// The stand-in serves from this process while the test blocks waiting for the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_a_worker_dying_before_its_batch_is_recorded_dispatched_loses_and_doubles_nothing() {
    batch_crash("before_dispatched").await;
}

// The stand-in serves from this process while the test blocks waiting for the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_a_worker_dying_after_its_batch_is_dispatched_loses_and_doubles_nothing() {
    batch_crash("after_launch").await;
}

// The stand-in serves from this process while the test blocks waiting for the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_a_worker_dying_before_acknowledging_its_batch_loses_and_doubles_nothing() {
    batch_crash("before_ack").await;
}
