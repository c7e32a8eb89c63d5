//! The login benchmark of `just bench` (`--suite login`), against the local stack's API with
//! its default login settings:
//!
//! 1. correct logins from `login_clients / 3` clients, each its own student;
//! 2. a flood of wrong passwords from `login_clients` clients over those students and unknown
//!    names.
//!
//! Each reports answers per second, the share of each status (429s are the throttle), and the
//! `coderun-functions` process's resident memory: the idle floor before, the peak sampled
//! during (VmRSS every 50 ms, and VmHWM), and what stays 5 s after. The limiter's counters are
//! cleared before and after, so the other suites (and a second run) can still log in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fred::prelude::*;
use serde_json::json;

use crate::bench::{Options, post};
use crate::bench_table::{Floor, Table};

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status (did coderun-functions exit?)"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .with_context(|| format!("no {name}"))?
            .parse()?;
        Ok(kib as f64 / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Deletes every login counter of the stack (`{prefix}:login:*`).
async fn clear_counters(redis: &Client, prefix: &str) -> anyhow::Result<()> {
    let pattern = format!("{prefix}:login:*");
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys): (String, Vec<String>) = redis
            .custom(
                fred::cmd!("SCAN"),
                vec![
                    cursor.clone(),
                    "MATCH".into(),
                    pattern.clone(),
                    "COUNT".into(),
                    "1000".into(),
                ],
            )
            .await?;
        if !keys.is_empty() {
            let _: i64 = redis.del(keys).await?;
        }
        if next == "0" {
            return Ok(());
        }
        cursor = next;
    }
}

pub struct Flood {
    name: String,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    elapsed: Duration,
    idle_rss: f64,
    peak_rss: f64,
    hwm: f64,
    after_rss: f64,
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let answered: u64 = self.statuses.values().sum();
        let share = |status: u16| {
            100.0 * *self.statuses.get(&status).unwrap_or(&0) as f64 / answered.max(1) as f64
        };
        let other: u64 = self
            .statuses
            .iter()
            .filter(|(s, _)| ![200, 401, 429].contains(*s))
            .map(|(_, n)| n)
            .sum();
        writeln!(
            f,
            "{:<28} {:>7.0} answers/s   200 {:>5.1}%   401 {:>5.1}%   429 {:>5.1}%   other {other}   errors {}",
            self.name,
            answered as f64 / self.elapsed.as_secs_f64(),
            share(200),
            share(401),
            share(429),
            self.errors,
        )?;
        write!(
            f,
            "{:<28} resident: idle {:.0} MiB, peak {:.0} MiB (VmHWM {:.0} MiB), 5 s after {:.0} MiB",
            "", self.idle_rss, self.peak_rss, self.hwm, self.after_rss
        )
    }
}

impl Flood {
    /// Its answer rate and the API's peak resident memory beside the idle API.
    fn record(&self, table: &Table) {
        let answered: u64 = self.statuses.values().sum();
        let summary: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        table.record(
            "login",
            &format!("{}: answers/s", self.name),
            answered as f64 / self.elapsed.as_secs_f64(),
            "req/s",
            None,
            None,
            format!("{}; transport errors {}", summary.join(", "), self.errors),
        );
        table.record(
            "login",
            &format!("{}: API peak resident", self.name),
            self.peak_rss.max(self.hwm),
            "MiB",
            None,
            Some(Floor {
                what: "the same API idle".into(),
                value: self.idle_rss,
            }),
            format!("{:.0} MiB 5 s after", self.after_rss),
        );
    }
}

/// `clients` loops of logins against `base` for `seconds`, `credentials(client, i)` choosing
/// each one, watching the resident memory of process `pid`.
pub async fn flood(
    name: &str,
    base: &str,
    pid: u32,
    clients: usize,
    seconds: u64,
    credentials: impl Fn(usize, u64) -> (String, String) + Send + Sync + 'static,
) -> anyhow::Result<Flood> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients * 2)
        .build()?;
    let (idle_rss, _) = memory(pid)?;
    let peak = Arc::new(AtomicU64::new(idle_rss.to_bits()));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, running) = (peak.clone(), running.clone());
        tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                if let Ok((rss, _)) = memory(pid) {
                    let old = f64::from_bits(peak.load(Ordering::SeqCst));
                    peak.store(old.max(rss).to_bits(), Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let credentials = Arc::new(credentials);
    let url = format!("{base}/api/v1/auth/login");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for c in 0..clients {
        let (client, url, credentials) = (client.clone(), url.clone(), credentials.clone());
        handles.push(tokio::spawn(async move {
            let (mut statuses, mut errors) = (BTreeMap::<u16, u64>::new(), 0u64);
            let mut i = 0;
            while Instant::now() < deadline {
                let (username, password) = credentials(c, i);
                i += 1;
                match client
                    .post(&url)
                    .json(&json!({"username": username, "password": password}))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                {
                    Ok(response) => *statuses.entry(response.status().as_u16()).or_default() += 1,
                    Err(_) => errors += 1,
                }
            }
            (statuses, errors)
        }));
    }
    let (mut statuses, mut errors) = (BTreeMap::new(), 0);
    for handle in handles {
        let (s, e) = handle.await?;
        for (status, n) in s {
            *statuses.entry(status).or_default() += n;
        }
        errors += e;
    }
    let elapsed = started.elapsed();
    running.store(false, Ordering::SeqCst);
    sampler.await?;
    let (_, hwm) = memory(pid)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (after_rss, _) = memory(pid)?;
    Ok(Flood {
        name: name.to_owned(),
        statuses,
        errors,
        elapsed,
        idle_rss,
        peak_rss: f64::from_bits(peak.load(Ordering::SeqCst)),
        hwm,
        after_rss,
    })
}

pub async fn run(options: &Options, table: &Table) -> anyhow::Result<()> {
    let base = options.base_url.trim_end_matches('/').to_owned();
    let pid: u32 = std::fs::read_to_string(&options.functions_pid_file)
        .with_context(|| {
            format!(
                "read the API's pid from {} (the login suite needs the local stack)",
                options.functions_pid_file
            )
        })?
        .trim()
        .parse()?;
    let redis = Builder::from_config(Config::from_url(&options.redis_url)?).build()?;
    redis
        .init()
        .await
        .context("connect to the local stack's Redis")?;
    clear_counters(&redis, &options.redis_prefix).await?;

    let result = async {
        let client = reqwest::Client::new();
        let admin = post(
            &client,
            format!("{base}/api/v1/auth/login"),
            None,
            json!({"username": "admin", "password": options.admin_password}),
        )
        .await?;
        let admin = admin["token"].as_str().context("no token")?.to_owned();
        let students = (options.login_clients / 3).max(1);
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let names: Arc<Vec<String>> =
            Arc::new((0..students).map(|i| format!("login-{tag}-{i}")).collect());
        for name in names.iter() {
            post(
                &client,
                format!("{base}/api/v1/users"),
                Some(&admin),
                json!({"username": name, "password": "bench-password", "role": "student"}),
            )
            .await?;
        }
        println!(
            "login floods against {base} ({} s each; default login settings)",
            options.login_seconds
        );
        let correct = {
            let names = names.clone();
            flood(
                "login: correct passwords",
                &base,
                pid,
                students,
                options.login_seconds,
                move |c, _| (names[c].clone(), "bench-password".to_owned()),
            )
            .await?
        };
        println!("{correct}");
        correct.record(table);
        clear_counters(&redis, &options.redis_prefix).await?;
        let wrong = {
            let names = names.clone();
            flood(
                "login: wrong passwords",
                &base,
                pid,
                options.login_clients,
                options.login_seconds,
                move |c, i| {
                    // Half at real accounts, half at names that do not exist.
                    let name = if (c as u64 + i).is_multiple_of(2) {
                        names[c % names.len()].clone()
                    } else {
                        format!("nobody-{c}-{i}")
                    };
                    (name, format!("guess-{i}"))
                },
            )
            .await?
        };
        println!("{wrong}");
        wrong.record(table);
        anyhow::Ok(())
    }
    .await;
    clear_counters(&redis, &options.redis_prefix).await?;
    result
}
