//! Capacity is never exceeded: three workers, a burst of 200 submissions, the semaphore, the
//! executions and the database sampled all along.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use support::{Platform, platform};

#[tokio::test]
async fn three_workers_never_exceed_the_capacity_with_two_hundred_submissions() {
    const CAPACITY: u32 = 4;
    const RUNS: usize = 200;
    let p = platform(vec![("capacity.default", CAPACITY.to_string())]).await;
    let workers = vec![
        p.worker("a").await,
        p.worker("b").await,
        p.worker("c").await,
    ];

    let done = Arc::new(AtomicBool::new(false));
    let (max_permits, max_live, max_db) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
    );
    let sampler = {
        let ctxs: Vec<_> = workers.iter().map(|w| w.ctx.clone()).collect();
        let (done, max_permits, max_live, max_db) = (
            done.clone(),
            max_permits.clone(),
            max_live.clone(),
            max_db.clone(),
        );
        let db = p.app.db.clone();
        tokio::spawn(async move {
            let mut samples = 0u32;
            while !done.load(Ordering::Relaxed) {
                let permits = ctxs[0].permits.in_use().await.unwrap();
                let live: u32 = ctxs.iter().map(|c| c.executor.live().len() as u32).sum();
                let active: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM runs WHERE status IN ('dispatched', 'pending', 'running', 'stopping')",
                )
                .fetch_one(&db)
                .await
                .unwrap();
                max_permits.fetch_max(permits, Ordering::Relaxed);
                max_live.fetch_max(live, Ordering::Relaxed);
                max_db.fetch_max(active as u32, Ordering::Relaxed);
                if live > CAPACITY {
                    let lists: Vec<_> = ctxs.iter().map(|c| c.executor.live()).collect();
                    let holders = ctxs[0].permits.holders().await.unwrap();
                    let mut states = Vec::new();
                    for id in lists.iter().flatten() {
                        let events: Vec<(String, String)> = sqlx::query_as(
                            "SELECT phase, source FROM run_events WHERE run_id = $1 ORDER BY id",
                        )
                        .bind(id)
                        .fetch_all(&db)
                        .await
                        .unwrap();
                        states.push((id.to_string(), events));
                    }
                    eprintln!("DEBUG live {lists:?} holders {holders:?} states {states:?}");
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };

    let mut ids = Vec::new();
    for i in 0..RUNS {
        let task = p.app.task(&p.token, &format!("burst {i}"), "python").await;
        let run = p
            .app
            .submit(
                &p.token,
                task["id"].as_str().unwrap(),
                json!({"command": "sleep 0.05; echo done"}),
            )
            .await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let run = p.wait_terminal(id, Duration::from_secs(240)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let phases = Platform::phases(&run);
        assert_eq!(
            phases.iter().filter(|p| *p == "dispatched").count(),
            1,
            "launched once: {phases:?}"
        );
    }
    done.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();

    let (permits, live, db) = (
        max_permits.load(Ordering::Relaxed),
        max_live.load(Ordering::Relaxed),
        max_db.load(Ordering::Relaxed),
    );
    eprintln!(
        "{samples} samples: at most {permits} permits, {live} executions, {db} active runs (capacity {CAPACITY})"
    );
    assert!(permits <= CAPACITY, "{permits} permits held at once");
    assert!(live <= CAPACITY, "{live} executions at once");
    assert!(db <= CAPACITY, "{db} runs active at once");
    assert!(live >= 2, "the fleet ran runs in parallel");
    for worker in workers {
        worker.stop().await;
    }
}
