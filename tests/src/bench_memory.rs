//! The memory suite of `just bench`: the API's resident memory while it archives and submits
//! a task at the size limit, next to its idle floor. The archive and the snapshot are built as
//! the files are read, so the peak should not follow the task's size (target: under 128 MiB).
//!
//! The peak is the kernel's high-water mark (`VmHWM` in `/proc/<pid>/status`), reset before
//! each step by writing `5` to `/proc/<pid>/clear_refs` (root, or the process's owner); the
//! resident size (`VmRSS`) is also sampled every 10 ms, which works without that right.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::bench::{Options, post};
use crate::bench_table::{Floor, Table, Target};

const MIB: f64 = 1024.0 * 1024.0;
const TARGET_MIB: f64 = 128.0;

/// A `/proc/<pid>/status` field in bytes.
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("a status line without a value")?
        .parse()?;
    Ok(kib * 1024)
}

/// Samples the resident size until stopped; the largest sample.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(rss) = status_bytes(pid, "VmRSS:") {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Self { stop, peak, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

/// Resets the process's high-water mark; false when this process may not.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Text that barely compresses (so the archive and the bundle are as large as the task), a
/// different stream for each seed.
fn text(bytes: usize, seed: u64) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(bytes);
    while out.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let c = b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[(state % 38) as usize];
        out.push(char::from(c));
    }
    out
}

pub async fn run(options: &Options, table: &Table) -> anyhow::Result<()> {
    let base = options.base_url.trim_end_matches('/').to_owned();
    let pid: u32 = std::fs::read_to_string(&options.functions_pid_file)
        .with_context(|| {
            format!(
                "read the API's pid from {} (the memory suite measures the local stack's \
                 coderun-functions)",
                options.functions_pid_file
            )
        })?
        .trim()
        .parse()
        .context("the API's pid file does not hold a pid")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1800))
        .build()?;
    let admin = post(
        &client,
        format!("{base}/api/v1/auth/login"),
        None,
        json!({"username": "admin", "password": options.admin_password}),
    )
    .await?;
    let admin = admin["token"].as_str().context("no token")?.to_owned();
    let task = post(
        &client,
        format!("{base}/api/v1/tasks"),
        Some(&admin),
        json!({"name": "bench memory", "language": "python"}),
    )
    .await?;
    let task_id = task["id"].as_str().context("task without id")?.to_owned();

    // Fill the task to the size limit with files at the file limit.
    let total = options.memory_task_mib * 1024 * 1024;
    let file_size = (options.memory_file_mib * 1024 * 1024).min(total);
    let started = Instant::now();
    let (mut stored, mut n) = (task["total_size"].as_u64().unwrap_or(0), 0u64);
    while stored < total as u64 {
        // The last file takes what is left, so the task ends exactly at the limit.
        let size = file_size.min(total - stored as usize);
        let response = client
            .put(format!(
                "{base}/api/v1/tasks/{task_id}/files/data/part{n:04}.txt"
            ))
            .bearer_auth(&admin)
            .body(text(size, n))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "saving file {n}: {}",
            response.status()
        );
        stored += size as u64;
        n += 1;
    }
    println!(
        "memory: a task of {:.0} MiB in {n} files of {:.0} MiB, built in {:.1} s",
        stored as f64 / MIB,
        file_size as f64 / MIB,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = status_bytes(pid, "VmRSS:")?;
    println!(
        "memory: coderun-functions idle       {:>7.1} MiB resident (VmRSS)",
        idle as f64 / MIB
    );

    // The archive, read to the end as a client would.
    let exact = reset_peak(pid);
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let mut response = client
        .get(format!("{base}/api/v1/tasks/{task_id}/archive"))
        .bearer_auth(&admin)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "archive: {}",
        response.status()
    );
    let mut zip_bytes = 0u64;
    while let Some(chunk) = response.chunk().await? {
        zip_bytes += chunk.len() as u64;
    }
    let elapsed = started.elapsed();
    report(
        table,
        "archive",
        pid,
        exact,
        sampler.finish().await,
        idle,
        format!(
            "{:.0} MiB zip in {:.1} s",
            zip_bytes as f64 / MIB,
            elapsed.as_secs_f64()
        ),
    )?;

    // The submit: the snapshot is built and uploaded in parts.
    let exact = reset_peak(pid);
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let run = post(
        &client,
        format!("{base}/api/v1/tasks/{task_id}/runs"),
        Some(&admin),
        json!({}),
    )
    .await?;
    let elapsed = started.elapsed();
    report(
        table,
        "submit",
        pid,
        exact,
        sampler.finish().await,
        idle,
        format!("202 in {:.1} s", elapsed.as_secs_f64()),
    )?;
    let run_id = run["id"].as_str().context("run without id")?;
    // Nothing to learn from running it: stop it, wait for its end, and remove the task.
    let _ = post(
        &client,
        format!("{base}/api/v1/runs/{run_id}/stop"),
        Some(&admin),
        json!({}),
    )
    .await;
    for _ in 0..600 {
        let run: serde_json::Value = client
            .get(format!("{base}/api/v1/runs/{run_id}"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        if matches!(
            run["status"].as_str(),
            Some("stopped" | "canceled" | "failed" | "succeeded")
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .delete(format!("{base}/api/v1/tasks/{task_id}"))
        .bearer_auth(&admin)
        .send()
        .await?;
    Ok(())
}

fn report(
    table: &Table,
    step: &str,
    pid: u32,
    exact: bool,
    sampled: u64,
    idle: u64,
    what: String,
) -> anyhow::Result<()> {
    let (peak, how) = if exact {
        (status_bytes(pid, "VmHWM:")?.max(sampled), "VmHWM")
    } else {
        (sampled, "VmRSS sampled every 10 ms")
    };
    let peak_mib = peak as f64 / MIB;
    println!(
        "memory: {step:<8} peak {:>7.1} MiB ({how}), {:>+7.1} MiB over idle, target < {TARGET_MIB:.0} MiB: {}   ({what})",
        peak_mib,
        (peak as f64 - idle as f64) / MIB,
        if peak_mib < TARGET_MIB {
            "met"
        } else {
            "NOT met"
        },
    );
    table.record(
        "memory",
        &format!("API resident memory: {step}"),
        peak_mib,
        "MiB",
        Some(Target::at_most(TARGET_MIB)),
        Some(Floor {
            what: "the same API idle".into(),
            value: idle as f64 / MIB,
        }),
        format!("{how}; {what}"),
    );
    Ok(())
}
