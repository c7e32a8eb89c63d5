//! The runs benchmarks of `just bench`, against the local stack with its worker:
//!
//! 1. a burst of submissions from many concurrent clients while the fleet is paused (capacity
//!    0 through the run-time override), counting 202s and 429s and checking that every
//!    accepted run exists and is queued — none lost;
//! 2. stream entry → launch latency with capacity free (the `queued` → `dispatched` events);
//! 3. submit → `succeeded` of hello-world Python, beside a bare `python3 -c pass`;
//! 4. the worker's resident memory with 100 runs in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fred::prelude::*;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::bench::{Options, percentile, post};

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn login(&self, username: &str, password: &str) -> anyhow::Result<String> {
        let body = post(
            &self.client,
            format!("{}/api/v1/auth/login", self.base),
            None,
            json!({"username": username, "password": password}),
        )
        .await?;
        Ok(body["token"].as_str().context("no token")?.to_owned())
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok(body)
    }

    /// A new student with a random name; returns their token.
    async fn student(&self, admin: &str) -> anyhow::Result<String> {
        let username = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        post(
            &self.client,
            format!("{}/api/v1/users", self.base),
            Some(admin),
            json!({"username": username, "password": "bench-password", "role": "student"}),
        )
        .await?;
        self.login(&username, "bench-password").await
    }

    /// Creates `count` Python tasks (8 at a time) whose main file is `code`.
    async fn tasks(&self, token: &str, count: usize, code: &str) -> anyhow::Result<Vec<String>> {
        let gate = Arc::new(Semaphore::new(8));
        let mut handles = Vec::new();
        for i in 0..count {
            let (client, base, token, code, gate) = (
                self.client.clone(),
                self.base.clone(),
                token.to_owned(),
                code.to_owned(),
                gate.clone(),
            );
            handles.push(tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                let task = post(
                    &client,
                    format!("{base}/api/v1/tasks"),
                    Some(&token),
                    json!({"name": format!("bench {i}"), "language": "python"}),
                )
                .await?;
                let id = task["id"].as_str().context("task without id")?.to_owned();
                let saved = client
                    .put(format!("{base}/api/v1/tasks/{id}/files/main.py"))
                    .bearer_auth(&token)
                    .body(code)
                    .send()
                    .await?;
                anyhow::ensure!(
                    saved.status().is_success(),
                    "save main.py: {}",
                    saved.status()
                );
                anyhow::Ok(id)
            }));
        }
        let mut ids = Vec::new();
        for handle in handles {
            ids.push(handle.await??);
        }
        Ok(ids)
    }

    async fn submit(
        &self,
        token: &str,
        task: &str,
        body: Value,
    ) -> anyhow::Result<(u16, Option<String>)> {
        let response = self
            .client
            .post(format!("{}/api/v1/tasks/{task}/runs", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, body["id"].as_str().map(str::to_owned)))
    }

    async fn wait_terminal(
        &self,
        token: &str,
        run: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.get(&format!("/api/v1/runs/{run}"), token).await?;
            if ["succeeded", "failed", "stopped", "canceled"]
                .contains(&run["status"].as_str().unwrap_or(""))
            {
                return Ok(run);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "run still {} after {timeout:?}",
                run["status"]
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn event_at(run: &Value, phase: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    run["events"]
        .as_array()?
        .iter()
        .find(|e| e["phase"] == phase)?["at"]
        .as_str()?
        .parse()
        .ok()
}

pub async fn run(options: &Options) -> anyhow::Result<()> {
    let api = Api {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(options.burst_clients * 2)
            .build()?,
        base: options.base_url.trim_end_matches('/').to_owned(),
    };
    let redis = Builder::from_config(Config::from_url(&options.redis_url)?).build()?;
    redis
        .init()
        .await
        .context("connect to the local stack's Redis")?;
    let capacity_key = format!("{}:capacity", options.redis_prefix);
    let admin = api.login("admin", &options.admin_password).await?;

    // The burst last: its 20,000 canceled runs leave entries the fleet must skip through
    // afterwards, which would distort the latencies.
    let result = async {
        latency(&api, &admin).await?;
        memory(options, &api, &redis, &capacity_key, &admin).await?;
        burst(options, &api, &redis, &capacity_key, &admin).await
    }
    .await;
    // Whatever happened, give the fleet its configured capacity back.
    let _: Result<(), _> = redis.del(&capacity_key).await;
    result
}

/// Submissions from `burst_clients` clients while the fleet is paused.
async fn burst(
    options: &Options,
    api: &Api,
    redis: &Client,
    capacity_key: &str,
    admin: &str,
) -> anyhow::Result<()> {
    let per_user = 10usize;
    let users = options.burst_clients.div_ceil(per_user);
    let per_client = options.burst.div_ceil(options.burst_clients);
    println!(
        "runs: preparing {} tasks for a burst of {} submissions from {} clients …",
        per_client * options.burst_clients,
        options.burst,
        options.burst_clients
    );
    let mut clients = Vec::new();
    for _ in 0..users {
        let token = api.student(admin).await?;
        let tasks = api.tasks(&token, per_user * per_client, "print('burst')\n").await.context(
            "creating the burst's tasks (start the stack through `just bench`, which raises the per-user limits)",
        )?;
        for chunk in tasks.chunks(per_client) {
            clients.push((token.clone(), chunk.to_vec()));
        }
    }
    clients.truncate(options.burst_clients);
    let stream_key = format!("{}:runs", options.redis_prefix);
    let before: u64 = redis.xlen(&stream_key).await?;
    let _: () = redis.set(capacity_key, 0, None, None, false).await?;

    let started = Instant::now();
    let mut handles = Vec::new();
    for (token, tasks) in clients {
        let (client, base) = (api.client.clone(), api.base.clone());
        handles.push(tokio::spawn(async move {
            let api = Api { client, base };
            let mut results = Vec::new();
            for task in tasks {
                let t = Instant::now();
                let outcome = api.submit(&token, &task, json!({})).await;
                results.push((t.elapsed(), outcome.ok(), token.clone()));
            }
            results
        }));
    }
    let mut latencies = Vec::new();
    let (mut accepted, mut throttled, mut other) = (Vec::new(), 0usize, 0usize);
    for handle in handles {
        for (latency, outcome, token) in handle.await? {
            latencies.push(latency);
            match outcome {
                Some((202, Some(id))) => accepted.push((token, id)),
                Some((429, _)) => throttled += 1,
                _ => other += 1,
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "{:<28} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   202 {}   429 {}   other {}",
        "submit (burst)",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        accepted.len(),
        throttled,
        other
    );

    // None lost: every accepted run exists, is still queued, and has its stream entry.
    let after: u64 = redis.xlen(&stream_key).await?;
    let gate = Arc::new(Semaphore::new(64));
    let mut checks = Vec::new();
    for (token, id) in &accepted {
        let (client, base, token, id, gate) = (
            api.client.clone(),
            api.base.clone(),
            token.clone(),
            id.clone(),
            gate.clone(),
        );
        checks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let api = Api { client, base };
            let run = api.get(&format!("/api/v1/runs/{id}"), &token).await?;
            // Cancel it: the burst only measures admission.
            let _ = api
                .client
                .post(format!("{}/api/v1/runs/{id}/stop", api.base))
                .bearer_auth(&token)
                .send()
                .await?;
            anyhow::Ok(run["status"] == "queued")
        }));
    }
    let mut queued = 0;
    for check in checks {
        queued += usize::from(check.await??);
    }
    println!(
        "{:<28} {} of {} accepted runs found queued, {} new stream entries; other answers {}",
        "  none lost?",
        queued,
        accepted.len(),
        after.saturating_sub(before),
        other
    );
    let _: () = redis.del(capacity_key).await?;
    Ok(())
}

/// Entry → launch latency, and submit → succeeded beside a bare interpreter start.
async fn latency(api: &Api, admin: &str) -> anyhow::Result<()> {
    let token = api.student(admin).await?;
    let rounds = 40;
    let tasks = api.tasks(&token, rounds, "print('hello, world')\n").await?;
    let (mut to_launch, mut to_success, mut client_seen) = (Vec::new(), Vec::new(), Vec::new());
    for task in &tasks {
        let t = Instant::now();
        let (status, id) = api.submit(&token, task, json!({})).await?;
        anyhow::ensure!(status == 202, "submit answered {status}");
        let run = api
            .wait_terminal(&token, &id.context("no run id")?, Duration::from_secs(60))
            .await?;
        client_seen.push(t.elapsed());
        anyhow::ensure!(
            run["status"] == "succeeded",
            "hello world did not succeed: {run}"
        );
        let queued = event_at(&run, "queued").context("no queued event")?;
        let dispatched = event_at(&run, "dispatched").context("no dispatched event")?;
        let finished: chrono::DateTime<chrono::Utc> = run["finished_at"]
            .as_str()
            .context("no finished_at")?
            .parse()?;
        to_launch.push((dispatched - queued).to_std()?);
        to_success.push((finished - queued).to_std()?);
    }
    for v in [&mut to_launch, &mut to_success, &mut client_seen] {
        v.sort();
    }
    let mut bare = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let status = tokio::process::Command::new("python3")
            .args(["-c", "pass"])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "python3 -c pass failed");
        bare.push(t.elapsed());
    }
    bare.sort();
    println!(
        "{:<28} p50 {:>6.2} ms   p99 {:>6.2} ms   ({rounds} runs, capacity free)",
        "entry -> launch",
        ms(percentile(&to_launch, 50.0)),
        ms(percentile(&to_launch, 99.0))
    );
    let p50 = percentile(&to_success, 50.0);
    let bare50 = percentile(&bare, 50.0);
    println!(
        "{:<28} p50 {:>6.2} ms   p99 {:>6.2} ms   (as the client saw it: p50 {:.2} ms)",
        "submit -> succeeded",
        ms(p50),
        ms(percentile(&to_success, 99.0)),
        ms(percentile(&client_seen, 50.0))
    );
    println!(
        "{:<28} p50 {:>6.2} ms   ratio {:.2}x",
        "bare python3 -c pass",
        ms(bare50),
        p50.as_secs_f64() / bare50.as_secs_f64()
    );
    Ok(())
}

/// The worker's resident memory with 100 runs in flight.
async fn memory(
    options: &Options,
    api: &Api,
    redis: &Client,
    capacity_key: &str,
    admin: &str,
) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(&options.worker_pid_file)
        .with_context(|| format!("read the worker's pid from {}", options.worker_pid_file))?;
    let rss = || -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse::<u64>()?
            / 1024)
    };
    let in_flight = 100;
    let _: () = redis
        .set(capacity_key, in_flight, None, None, false)
        .await?;
    let token = api.student(admin).await?;
    let tasks = api
        .tasks(&token, in_flight, "import time\ntime.sleep(20)\n")
        .await?;
    let idle = rss()?;
    let mut ids = Vec::new();
    for task in &tasks {
        let (status, id) = api.submit(&token, task, json!({})).await?;
        anyhow::ensure!(
            status == 202,
            "submit answered {status} (raise runs.max_active_per_user)"
        );
        ids.push(id.context("no id")?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut peak, mut running) = (0, 0);
    while Instant::now() < deadline {
        running = 0;
        for id in &ids {
            if api.get(&format!("/api/v1/runs/{id}"), &token).await?["status"] == "running" {
                running += 1;
            }
        }
        peak = peak.max(rss()?);
        if running == in_flight {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..10 {
        peak = peak.max(rss()?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{:<28} idle {idle} MiB, peak {peak} MiB with {running} of {in_flight} runs running",
        "worker resident memory"
    );
    for id in &ids {
        let _ = api
            .client
            .post(format!("{}/api/v1/runs/{id}/stop", api.base))
            .bearer_auth(&token)
            .send()
            .await?;
    }
    Ok(())
}
