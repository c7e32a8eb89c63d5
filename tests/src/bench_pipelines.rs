//! The pipelines benchmark of `just bench` (issue 11), against the local stack with its worker:
//!
//! 1. single hello-world runs one after another: stream entry → launch, the floor the pipeline
//!    figures stand beside;
//! 2. pipeline runs of 3 stages × 20 parallel hello-world steps, one after another: the time
//!    from a stage's last step ending (its terminal event) to the next stage's first step being
//!    dispatched;
//! 3. status callbacks throughout: a receiver in this process, registered as an endpoint of the
//!    benchmark's student for run and pipeline-run status changes, notes when each callback
//!    arrives; the latency is from the event's `timestamp` (taken when the status changed, in
//!    the changing transaction) to its arrival, beside a bare POST of the same body to the same
//!    receiver.
//!
//! The fleet's capacity is raised to one stage's width while the suite runs (through the
//! run-time override), so a stage's steps really run in parallel, and given back afterwards.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use chrono::{DateTime, Utc};
use fred::prelude::*;
use serde_json::{Value, json};

use crate::bench::{Options, percentile, post};
use crate::bench_runs::{Api, Class, event_at, ms};
use crate::bench_table::{Floor, Table};

/// Stages of the benchmark's pipeline, and steps in each.
const STAGES: usize = 3;
const STEPS: usize = 20;

/// One callback as it arrived.
struct Arrival {
    at: DateTime<Utc>,
    kind: String,
    changed_at: DateTime<Utc>,
}

/// Callbacks received so far.
type Arrivals = Arc<Mutex<Vec<Arrival>>>;

async fn receive(State(arrivals): State<Arrivals>, body: Bytes) -> axum::http::StatusCode {
    let at = Utc::now();
    let parsed: Option<(String, DateTime<Utc>)> =
        serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            Some((
                v["type"].as_str()?.to_owned(),
                v["timestamp"].as_str()?.parse().ok()?,
            ))
        });
    if let Some((kind, changed_at)) = parsed {
        arrivals.lock().expect("arrivals lock").push(Arrival {
            at,
            kind,
            changed_at,
        });
    }
    axum::http::StatusCode::NO_CONTENT
}

/// Starts the receiver on a loopback port of its own.
async fn start_receiver() -> anyhow::Result<(SocketAddr, Arrivals)> {
    let arrivals = Arrivals::default();
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((address, arrivals))
}

/// Waits until no callback has arrived for `quiet` (at most `limit`), then takes them all.
async fn drain(arrivals: &Arrivals, quiet: Duration, limit: Duration) -> Vec<Arrival> {
    let deadline = Instant::now() + limit;
    let mut seen = usize::MAX;
    loop {
        let count = arrivals.lock().expect("arrivals lock").len();
        if count == seen || Instant::now() >= deadline {
            break;
        }
        seen = count;
        tokio::time::sleep(quiet).await;
    }
    std::mem::take(&mut *arrivals.lock().expect("arrivals lock"))
}

/// Sorted delivery latencies of `arrivals`.
fn latencies(arrivals: &[Arrival]) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .map(|a| (a.at - a.changed_at).to_std().unwrap_or_default())
        .collect();
    latencies.sort();
    latencies
}

pub async fn run(options: &Options, table: &Table) -> anyhow::Result<()> {
    let api = Api {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(16)
            .build()?,
        base: options.base_url.trim_end_matches('/').to_owned(),
    };
    let redis = Builder::from_config(Config::from_url(&options.redis_url)?).build()?;
    redis
        .init()
        .await
        .context("connect to the local stack's Redis")?;
    let capacity_key = format!("{}:capacity", options.redis_prefix);
    let class = Class::connect(options).await?;
    let singles = if options.quick { 10 } else { 30 };
    let pipeline_runs = if options.quick { 2 } else { 8 };
    let student = class
        .students(1, singles + 1, "print('hello, world')\n")
        .await?
        .pop()
        .context("no student")?;
    let (address, arrivals) = start_receiver().await?;
    let endpoint = post(
        &api.client,
        format!("{}/api/v1/webhooks", api.base),
        Some(&student.token),
        json!({
            "url": format!("http://{address}/hook"),
            "events": ["run.status", "pipeline_run.status"],
        }),
    )
    .await
    .context("register the receiver (the local stack allows loopback callbacks)")?;
    let endpoint_id = endpoint["id"]
        .as_str()
        .context("endpoint without id")?
        .to_owned();

    let _: () = redis.set(&capacity_key, STEPS, None, None, false).await?;
    let result = measure(
        table,
        &api,
        &class,
        &student.token,
        &student.tasks,
        pipeline_runs,
        address,
        &arrivals,
        &endpoint_id,
    )
    .await;
    let _: Result<(), _> = redis.del(&capacity_key).await;
    let _ = api
        .client
        .delete(format!("{}/api/v1/webhooks/{endpoint_id}", api.base))
        .bearer_auth(&student.token)
        .send()
        .await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    table: &Table,
    api: &Api,
    class: &Class,
    token: &str,
    tasks: &[String],
    pipeline_runs: usize,
    receiver: SocketAddr,
    arrivals: &Arrivals,
    endpoint_id: &str,
) -> anyhow::Result<()> {
    let (pipeline_task, single_tasks) = tasks.split_last().context("no tasks")?;

    // 1. Single runs, one after another.
    println!(
        "pipelines: {} single hello-world runs …",
        single_tasks.len()
    );
    let mut single_launch = Vec::new();
    for task in single_tasks {
        let (status, id) = api.submit(token, task, json!({})).await?;
        anyhow::ensure!(status == 202, "submit answered {status}");
        let run = api
            .wait_terminal(token, &id.context("no run id")?, Duration::from_secs(60))
            .await?;
        anyhow::ensure!(run["status"] == "succeeded", "hello world failed: {run}");
        let queued = event_at(&run, "queued").context("no queued event")?;
        let dispatched = event_at(&run, "dispatched").context("no dispatched event")?;
        single_launch.push((dispatched - queued).to_std()?);
    }
    single_launch.sort();
    let single_callbacks = drain(
        arrivals,
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .await;
    let single_delivery = latencies(&single_callbacks);

    // 2. Pipeline runs, one after another.
    let stages: Vec<Value> = (1..=STAGES)
        .map(|s| {
            json!({
                "name": format!("stage-{s}"),
                "steps": (1..=STEPS)
                    .map(|n| json!({"name": format!("s{s}-{n:02}"), "task_id": pipeline_task}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let pipeline = post(
        &api.client,
        format!("{}/api/v1/pipelines", api.base),
        Some(token),
        json!({"name": "bench pipeline", "stages": stages}),
    )
    .await?;
    let pipeline_id = pipeline["id"].as_str().context("pipeline without id")?;
    println!(
        "pipelines: {pipeline_runs} pipeline runs of {STAGES} stages × {STEPS} hello-world steps …"
    );
    let mut gaps = Vec::new();
    let mut durations = Vec::new();
    for _ in 0..pipeline_runs {
        let started = Instant::now();
        let run = post(
            &api.client,
            format!("{}/api/v1/pipelines/{pipeline_id}/runs", api.base),
            Some(token),
            json!({}),
        )
        .await?;
        let run_id: uuid::Uuid = run["id"].as_str().context("no pipeline run id")?.parse()?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let run = api
                .get(&format!("/api/v1/pipeline-runs/{run_id}"), token)
                .await?;
            match run["status"].as_str().unwrap_or("") {
                "succeeded" => break,
                "failed" | "stopped" => anyhow::bail!("the pipeline run did not succeed: {run}"),
                _ => {}
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "pipeline run still {} after 300 s",
                run["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        durations.push(started.elapsed());
        gaps.extend(stage_gaps(&class.pool, run_id).await?);
    }
    gaps.sort();
    durations.sort();
    let pipeline_callbacks = drain(
        arrivals,
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .await;
    let pipeline_delivery = latencies(&pipeline_callbacks);
    let pipeline_events = pipeline_callbacks
        .iter()
        .filter(|a| a.kind == "pipeline_run.status")
        .count();
    let (pending, failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed')
         FROM webhook_deliveries WHERE endpoint_id = $1",
    )
    .bind(endpoint_id.parse::<uuid::Uuid>()?)
    .fetch_one(&class.pool)
    .await?;

    // 3. The floor of a callback: the same body POSTed straight to the receiver.
    let body = json!({"type": "run.status", "timestamp": Utc::now(), "sequence": 1,
                      "data": {"run": {"status": "succeeded"}}});
    let bare_client = reqwest::Client::new();
    let mut bare = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let response = bare_client
            .post(format!("http://{receiver}/hook"))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "the receiver answered {}",
            response.status()
        );
        bare.push(t.elapsed());
    }
    bare.sort();
    arrivals.lock().expect("arrivals lock").clear();

    let single_floor = Floor {
        what: "a single run's entry -> launch p50".into(),
        value: ms(percentile(&single_launch, 50.0)),
    };
    let note = format!(
        "{pipeline_runs} pipeline runs of {STAGES} × {STEPS} hello-world steps one after another \
         (capacity {STEPS}), {} stage transitions; pipeline run p50 {:.0} ms",
        gaps.len(),
        ms(percentile(&durations, 50.0))
    );
    table.record(
        "pipelines",
        "stage end -> next dispatch p50",
        ms(percentile(&gaps, 50.0)),
        "ms",
        None,
        Some(single_floor.clone()),
        note,
    );
    table.record(
        "pipelines",
        "stage end -> next dispatch p99",
        ms(percentile(&gaps, 99.0)),
        "ms",
        None,
        Some(Floor {
            what: "a single run's entry -> launch p99".into(),
            value: ms(percentile(&single_launch, 99.0)),
        }),
        format!("{} single runs one after another", single_launch.len()),
    );
    let bare_floor = |p: f64| Floor {
        what: "the same body POSTed straight to the receiver".into(),
        value: ms(percentile(&bare, p)),
    };
    table.record(
        "pipelines",
        "callback delivery p50 (pipeline runs)",
        ms(percentile(&pipeline_delivery, 50.0)),
        "ms",
        None,
        Some(bare_floor(50.0)),
        format!(
            "status change -> receiver; {} callbacks ({pipeline_events} pipeline-run), \
             {pending} still pending, {failed} failed",
            pipeline_delivery.len()
        ),
    );
    table.record(
        "pipelines",
        "callback delivery p99 (pipeline runs)",
        ms(percentile(&pipeline_delivery, 99.0)),
        "ms",
        None,
        Some(bare_floor(99.0)),
        "",
    );
    table.record(
        "pipelines",
        "callback delivery p50 (single runs)",
        ms(percentile(&single_delivery, 50.0)),
        "ms",
        None,
        Some(bare_floor(50.0)),
        format!("{} callbacks of single runs", single_delivery.len()),
    );
    table.record(
        "pipelines",
        "callback delivery p99 (single runs)",
        ms(percentile(&single_delivery, 99.0)),
        "ms",
        None,
        Some(bare_floor(99.0)),
        "",
    );
    Ok(())
}

/// For each stage after the first, the time from the previous stage's last step ending (the
/// terminal event of its run) to this stage's first `dispatched` event.
async fn stage_gaps(pool: &sqlx::PgPool, run: uuid::Uuid) -> anyhow::Result<Vec<Duration>> {
    let rows: Vec<(i32, Option<DateTime<Utc>>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT s.stage,
                max(e.at) FILTER (WHERE e.phase = r.status),
                min(e.at) FILTER (WHERE e.phase = 'dispatched')
         FROM pipeline_steps s
         JOIN runs r ON r.id = s.run_id
         JOIN run_events e ON e.run_id = r.id
         WHERE s.pipeline_run_id = $1
         GROUP BY s.stage ORDER BY s.stage",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        rows.len() == STAGES,
        "{} stages ran, not {STAGES}",
        rows.len()
    );
    rows.windows(2)
        .map(|pair| {
            let ended = pair[0].1.context("a stage without an end")?;
            let dispatched = pair[1].2.context("a stage without a dispatch")?;
            Ok((dispatched - ended).to_std().unwrap_or_default())
        })
        .collect()
}
