//! `just demo`: the main job of coderun, end to end, against a running server (the local stack).
//!
//! It logs in, creates a Python task, saves a `main.py` that counts slowly and writes a file to
//! `$OUTPUT_DIR`, submits it, and follows the run: its phases (polling `GET /runs/{id}`) and its
//! log as it grows (the server-sent events of `/log/stream`, or the `/log?page=N` pages with
//! `--poll`), with a phase timeline and a spinner on a terminal and plain lines otherwise. Then
//! it prints where the log and the outputs can be downloaded, downloads them through their
//! presigned URLs, and exits non-zero unless the run succeeded. Ctrl-C stops the run (a second
//! Ctrl-C leaves at once).
//!
//! It speaks only the public HTTP API (`/api/v1`, documented by its OpenAPI document), as any client would.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(clap::Parser, Debug)]
#[command(
    name = "coderun-demo",
    about = "Runs a small Python program on coderun and follows it live"
)]
pub struct Options {
    /// The API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    /// Who logs in (the local stack seeds demo/demo).
    #[arg(long, default_value = "demo")]
    pub username: String,
    #[arg(long, default_value = "demo")]
    pub password: String,
    /// How many lines the program counts.
    #[arg(long, default_value_t = 12)]
    pub steps: u32,
    /// Seconds the program sleeps after each line.
    #[arg(long, default_value_t = 0.3)]
    pub delay: f64,
    /// The program ends with this exit code (anything but 0 makes the run, and the demo, fail).
    #[arg(long, default_value_t = 0)]
    pub exit_code: u8,
    /// Follow the log by polling `/log?page=N` instead of the `/log/stream` events.
    #[arg(long)]
    pub poll: bool,
    /// Plain lines without colours or spinner, even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Older demo tasks (named `coderun-demo …`) beyond this many are deleted before a new one is
    /// created, so repeated demos never reach the per-user task quota.
    #[arg(long, default_value_t = 5)]
    pub keep: usize,
}

/// The program the demo runs: a few lines, slowly, one on stderr, and two files in $OUTPUT_DIR.
fn program(steps: u32, delay: f64, exit_code: u8) -> String {
    format!(
        r#"import json
import os
import sys
import time
from pathlib import Path

STEPS = {steps}
DELAY = {delay}

print(f"coderun demo: counting to {{STEPS}} in a sandbox (run {{os.environ.get('RUN_ID', '?')}})", flush=True)
squares = []
for i in range(1, STEPS + 1):
    time.sleep(DELAY)
    squares.append(i * i)
    print(f"step {{i:>2}}/{{STEPS}}: {{i}}^2 = {{i * i}}", flush=True)
print("this line went to stderr; stdout and stderr make one log", file=sys.stderr, flush=True)

out = Path(os.environ["OUTPUT_DIR"])
(out / "result.txt").write_text(f"sum of the first {{STEPS}} squares: {{sum(squares)}}\n")
(out / "squares.json").write_text(json.dumps({{"squares": squares}}) + "\n")
print(f"wrote result.txt and squares.json to $OUTPUT_DIR", flush=True)
sys.exit({exit_code})
"#
    )
}

const TERMINAL: [&str; 4] = ["succeeded", "failed", "stopped", "canceled"];

fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

// --- HTTP -------------------------------------------------------------------------------------

struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Sends, and insists on `expected`; anything else becomes an error quoting the problem.
    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        expected: &[StatusCode],
    ) -> anyhow::Result<reqwest::Response> {
        let response = request
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("{what}: no answer from {}", self.base))?;
        if expected.contains(&response.status()) {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|p| {
                let title = p["title"].as_str().unwrap_or_default().to_owned();
                let detail = p["detail"].as_str().unwrap_or_default().to_owned();
                (!title.is_empty() || !detail.is_empty()).then(|| format!("{title}: {detail}"))
            })
            .unwrap_or(body);
        let expected: Vec<String> = expected.iter().map(|s| s.as_u16().to_string()).collect();
        bail!(
            "{what}: expected {}, got {status} — {detail}",
            expected.join(" or ")
        )
    }

    async fn json(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        expected: StatusCode,
    ) -> anyhow::Result<Value> {
        let response = self.send(what, request, &[expected]).await?;
        response
            .json()
            .await
            .with_context(|| format!("{what}: the answer is not JSON"))
    }
}

// --- the display ------------------------------------------------------------------------------

/// Writes the demo's lines: with colours and a spinner line at the bottom on a terminal, plain
/// lines otherwise.
struct Screen {
    fancy: bool,
    /// Whether a status line is drawn (and must be erased before the next line).
    status_drawn: bool,
    frame: usize,
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Screen {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.fancy {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn clear_status(&mut self) {
        if self.status_drawn {
            print!("\r\x1b[2K");
            self.status_drawn = false;
        }
    }

    fn line(&mut self, text: &str) {
        self.clear_status();
        println!("{text}");
    }

    fn step(&mut self, text: &str) {
        let mark = self.paint("32", if self.fancy { "✓" } else { "ok" });
        self.line(&format!("  {mark} {text}"));
    }

    fn phase(&mut self, phase: &str, offset: Option<f64>, detail: &str) {
        let colour = match phase {
            "succeeded" => "1;32",
            "failed" | "canceled" => "1;31",
            "stopping" | "stopped" => "1;33",
            "running" => "1;34",
            _ => "36",
        };
        let offset = offset.map_or_else(|| "      ?".to_owned(), |s| format!("{s:>+7.2}s"));
        let offset = self.paint("2", &offset);
        if self.fancy {
            let dot = self.paint(colour, "●");
            let name = self.paint(colour, &format!("{phase:<10}"));
            self.line(&format!("  {dot} {name} {offset}  {detail}"));
        } else {
            self.line(&format!("phase {phase:<10} {offset}  {detail}"));
        }
    }

    fn log(&mut self, text: &str) {
        if self.fancy {
            let bar = self.paint("2", "│");
            self.line(&format!("  {bar} {text}"));
        } else {
            self.line(&format!("log   {text}"));
        }
    }

    /// Redraws the spinner line (terminal only).
    fn status(&mut self, text: &str) {
        if !self.fancy {
            return;
        }
        self.frame = (self.frame + 1) % SPINNER.len();
        let spinner = self.paint("36", SPINNER[self.frame]);
        print!("\r\x1b[2K  {spinner} {}", self.paint("2", text));
        let _ = std::io::stdout().flush();
        self.status_drawn = true;
    }
}

// --- following a run --------------------------------------------------------------------------

/// What the followers report to the display.
enum Update {
    /// New phase events (in order) and the run as it now reads.
    Run { new_events: Vec<Value>, run: Value },
    /// One log line.
    Line(String),
    /// The log is complete (the stream's `end` event, or a page saying `complete`).
    LogEnd,
    /// Something worth telling but not fatal (a reconnect, a fallback).
    Note(String),
    /// A follower gave up.
    Failed(String),
}

/// Polls `GET /runs/{id}` until the run is terminal.
async fn follow_phases(
    api: std::sync::Arc<Api>,
    run_id: String,
    tx: mpsc::UnboundedSender<Update>,
) {
    let mut seen = 0usize;
    let mut errors = 0u32;
    loop {
        let what = format!("GET /api/v1/runs/{run_id}");
        match api
            .json(
                &what,
                api.request(Method::GET, &format!("/api/v1/runs/{run_id}")),
                StatusCode::OK,
            )
            .await
        {
            Ok(run) => {
                errors = 0;
                let events = run["events"].as_array().cloned().unwrap_or_default();
                let new_events: Vec<Value> = events.into_iter().skip(seen).collect();
                seen += new_events.len();
                let done = is_terminal(run["status"].as_str().unwrap_or_default());
                if tx.send(Update::Run { new_events, run }).is_err() || done {
                    return;
                }
            }
            Err(e) => {
                errors += 1;
                if errors >= 20 {
                    let _ = tx.send(Update::Failed(format!("{e:#}")));
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    event: String,
    data: String,
    id: Option<String>,
}

/// Splits a byte stream into server-sent events (the `text/event-stream` format: `field: value`
/// lines, a blank line ends an event, `:` starts a comment, several `data` lines join with `\n`).
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: Vec<String>,
    id: Option<String>,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    events.push(SseEvent {
                        event: std::mem::take(&mut self.event),
                        data: std::mem::take(&mut self.data).join("\n"),
                        id: self.id.clone(),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_owned(),
                "data" => self.data.push(value.to_owned()),
                "id" => self.id = Some(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

/// Follows the log through `/log/stream`, resuming with `Last-Event-ID` when the connection
/// drops; falls back to polling pages when the stream is not available.
async fn follow_log_stream(
    api: std::sync::Arc<Api>,
    run_id: String,
    tx: mpsc::UnboundedSender<Update>,
) {
    let mut last_id: Option<String> = None;
    let mut delivered = 0u64;
    let mut attempts = 0u32;
    loop {
        let mut request = api
            .request(Method::GET, &format!("/api/v1/runs/{run_id}/log/stream"))
            .header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let mut response = match request.send().await {
            Ok(r) if r.status() == StatusCode::OK => r,
            Ok(r) => {
                let _ = tx.send(Update::Note(format!(
                    "the log stream answered {}; following the log by pages instead",
                    r.status()
                )));
                return follow_log_pages(api, run_id, delivered, tx).await;
            }
            Err(e) => {
                attempts += 1;
                if attempts > 5 {
                    let _ = tx.send(Update::Note(format!(
                        "the log stream failed ({e}); following the log by pages instead"
                    )));
                    return follow_log_pages(api, run_id, delivered, tx).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut parser = SseParser::default();
        while let Ok(Some(chunk)) = response.chunk().await {
            for event in parser.push(&chunk) {
                match event.event.as_str() {
                    "line" | "" => {
                        last_id = event.id.clone().or(last_id);
                        delivered += 1;
                        if tx.send(Update::Line(event.data)).is_err() {
                            return;
                        }
                    }
                    "end" => {
                        let _ = tx.send(Update::LogEnd);
                        return;
                    }
                    _ => {}
                }
            }
        }
        // Closed before its `end` event, or broken: resume after the last line.
        attempts += 1;
        if attempts > 5 {
            let _ = tx.send(Update::Note(
                "the log stream keeps closing; following the log by pages instead".into(),
            ));
            return follow_log_pages(api, run_id, delivered, tx).await;
        }
        let _ = tx.send(Update::Note("the log stream closed early; resuming".into()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Follows the log by polling `GET /runs/{id}/log?page=N` until a page says `complete`, skipping
/// the first `skip` lines (already shown).
async fn follow_log_pages(
    api: std::sync::Arc<Api>,
    run_id: String,
    skip: u64,
    tx: mpsc::UnboundedSender<Update>,
) {
    let (mut page, mut taken_on_page, mut before_page) = (1u64, 0usize, 0u64);
    let mut errors = 0u32;
    loop {
        let what = format!("GET /api/v1/runs/{run_id}/log?page={page}");
        let request = api.request(
            Method::GET,
            &format!("/api/v1/runs/{run_id}/log?page={page}"),
        );
        let body = match api.json(&what, request, StatusCode::OK).await {
            Ok(body) => body,
            Err(e) => {
                errors += 1;
                if errors >= 20 {
                    let _ = tx.send(Update::Failed(format!("{e:#}")));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        errors = 0;
        let lines: Vec<String> = body["lines"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|v| v.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        for (index, line) in lines.iter().enumerate().skip(taken_on_page) {
            if before_page + index as u64 >= skip && tx.send(Update::Line(line.clone())).is_err() {
                return;
            }
        }
        taken_on_page = taken_on_page.max(lines.len());
        let total_pages = body["total_pages"].as_u64().unwrap_or(1);
        if page < total_pages {
            // This page is full: on to the next one at once.
            before_page += lines.len() as u64;
            page += 1;
            taken_on_page = 0;
            continue;
        }
        if body["complete"].as_bool().unwrap_or(false) {
            let _ = tx.send(Update::LogEnd);
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2026-01-02T03:04:05.678Z`, or with an
/// offset), for elapsed times between the server's timestamps.
fn epoch_seconds(text: &str) -> Option<f64> {
    let (date, rest) = text.split_once('T').or_else(|| text.split_once(' '))?;
    let mut ymd = date.splitn(3, '-');
    let (year, month, day): (i64, i64, i64) = (
        ymd.next()?.parse().ok()?,
        ymd.next()?.parse().ok()?,
        ymd.next()?.parse().ok()?,
    );
    let (time, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "Z"),
    };
    let mut hms = time.splitn(3, ':');
    let hours: f64 = hms.next()?.parse().ok()?;
    let minutes: f64 = hms.next()?.parse().ok()?;
    let seconds: f64 = hms.next()?.parse().ok()?;
    let offset_seconds = match offset {
        "Z" | "z" => 0.0,
        _ => {
            let sign = if offset.starts_with('-') { -1.0 } else { 1.0 };
            let (h, m) = offset[1..].split_once(':')?;
            sign * (h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0)
        }
    };
    // Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hours * 3600.0 + minutes * 60.0 + seconds - offset_seconds)
}

fn human_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

/// What the run reads like once it has ended, as the display saw it.
struct Followed {
    run: Value,
    lines: usize,
}

/// Prints one phase event with its time since the first one (the server's clock).
fn show_event(screen: &mut Screen, origin: &mut Option<f64>, event: &Value) {
    let at = event["at"].as_str().and_then(epoch_seconds);
    if origin.is_none() {
        *origin = at;
    }
    let offset = at.zip(*origin).map(|(at, origin)| at - origin);
    screen.phase(
        event["phase"].as_str().unwrap_or("?"),
        offset,
        event["detail"].as_str().unwrap_or_default(),
    );
}

/// Shows the run's phases and log until it has ended and its log is complete.
async fn follow(
    api: std::sync::Arc<Api>,
    screen: &mut Screen,
    run_id: &str,
    poll: bool,
) -> anyhow::Result<Followed> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let phases = tokio::spawn(follow_phases(api.clone(), run_id.to_owned(), tx.clone()));
    let log = if poll {
        tokio::spawn(follow_log_pages(api.clone(), run_id.to_owned(), 0, tx))
    } else {
        tokio::spawn(follow_log_stream(api.clone(), run_id.to_owned(), tx))
    };
    let abort = || {
        phases.abort();
        log.abort();
    };

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut origin: Option<f64> = None;
    let mut run = Value::Null;
    let mut status = "queued".to_owned();
    // Log lines wait until the `running` phase is shown (the phases are polled, the log is
    // pushed), and the final phase waits for the end of the log, so the timeline reads in order.
    let mut held_lines: VecDeque<(Instant, String)> = VecDeque::new();
    let mut held_final: Vec<Value> = Vec::new();
    let mut shown_running = false;
    let mut terminal_since: Option<Instant> = None;
    let mut log_done = false;
    let mut lines = 0usize;
    let mut stop_requested = false;

    loop {
        tokio::select! {
            update = rx.recv() => match update {
                Some(Update::Run { new_events, run: latest }) => {
                    status = latest["status"].as_str().unwrap_or("?").to_owned();
                    if origin.is_none() {
                        origin = latest["created_at"].as_str().and_then(epoch_seconds);
                    }
                    for event in new_events {
                        let phase = event["phase"].as_str().unwrap_or_default();
                        if is_terminal(phase) {
                            held_final.push(event);
                            continue;
                        }
                        if matches!(phase, "running" | "stopping") {
                            shown_running = true;
                        }
                        show_event(screen, &mut origin, &event);
                    }
                    if is_terminal(&status) && terminal_since.is_none() {
                        terminal_since = Some(Instant::now());
                    }
                    run = latest;
                }
                Some(Update::Line(line)) => held_lines.push_back((Instant::now(), line)),
                Some(Update::LogEnd) => log_done = true,
                Some(Update::Note(note)) => screen.line(&format!("  {}", screen.paint("33", &note))),
                Some(Update::Failed(error)) => {
                    abort();
                    bail!("lost track of the run: {error}");
                }
                None => {
                    // Both followers ended without an end: treat the log as done.
                    log_done = true;
                }
            },
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => {
                if stop_requested {
                    abort();
                    screen.clear_status();
                    bail!("interrupted; run {run_id} may still be active (POST /api/v1/runs/{run_id}/stop)");
                }
                stop_requested = true;
                screen.line(&format!("  {}", screen.paint("33", "Ctrl-C: stopping the run (press again to leave at once)")));
                let request = api.request(Method::POST, &format!("/api/v1/runs/{run_id}/stop"));
                if let Err(e) = api.send("POST /runs/{id}/stop", request, &[StatusCode::OK, StatusCode::ACCEPTED]).await {
                    screen.line(&format!("  {}", screen.paint("31", &format!("{e:#}"))));
                }
            }
        }

        let hold_expired = held_lines
            .front()
            .is_some_and(|(at, _)| at.elapsed() > Duration::from_millis(1500));
        if shown_running || terminal_since.is_some() || hold_expired {
            while let Some((_, line)) = held_lines.pop_front() {
                screen.log(&line);
                lines += 1;
            }
        }
        let log_overdue = terminal_since.is_some_and(|t| t.elapsed() > Duration::from_secs(10));
        if terminal_since.is_some() && (log_done || log_overdue) {
            if !log_done {
                screen.line(&format!(
                    "  {}",
                    screen.paint(
                        "33",
                        "the log did not end within 10 s of the run; not waiting longer"
                    )
                ));
            }
            for event in held_final.drain(..) {
                show_event(screen, &mut origin, &event);
            }
            break;
        }
        screen.status(&format!(
            "{status} · {:.1}s · {lines} log line{}",
            started.elapsed().as_secs_f64(),
            if lines == 1 { "" } else { "s" }
        ));
    }
    screen.clear_status();
    abort();
    Ok(Followed { run, lines })
}

// --- the demo ---------------------------------------------------------------------------------

/// Deletes the caller's older demo tasks beyond the newest `keep`.
async fn prune_old_demo_tasks(api: &Api, screen: &mut Screen, keep: usize) -> anyhow::Result<()> {
    let list = api
        .json(
            "GET /api/v1/tasks",
            api.request(Method::GET, "/api/v1/tasks?q=coderun-demo&per_page=100"),
            StatusCode::OK,
        )
        .await?;
    let old: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("coderun-demo "))
        })
        .skip(keep.saturating_sub(1))
        .filter_map(|t| Some((t["id"].as_str()?.to_owned(), t["name"].as_str()?.to_owned())))
        .collect();
    for (id, name) in old {
        let response = api
            .request(Method::DELETE, &format!("/api/v1/tasks/{id}"))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        if response.status().is_success() {
            screen.step(&format!(
                "deleted the old demo task \"{name}\" (keeping the newest {keep})"
            ));
        }
    }
    Ok(())
}

pub async fn run(options: Options) -> anyhow::Result<ExitCode> {
    let fancy = !options.plain
        && std::io::stdout().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let mut screen = Screen {
        fancy,
        status_drawn: false,
        frame: 0,
    };
    let base = options.base_url.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // The log download answers 302; the demo shows the Location rather than following it.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut api = Api {
        client: client.clone(),
        base: base.clone(),
        token: None,
    };

    println!(
        "{}",
        screen.paint("1", &format!("coderun demo against {base}"))
    );
    let ready = client
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("coderun does not answer at {base}; start it with `just dev`"))?;
    if ready.status() != StatusCode::OK {
        bail!(
            "{base}/readyz answers {}; is the stack healthy? (infra/local/dev.sh --status)",
            ready.status()
        );
    }
    screen.step("the API is ready");

    // Log in.
    let login = api
        .json(
            "POST /api/v1/auth/login",
            api.request(Method::POST, "/api/v1/auth/login")
                .json(&json!({"username": options.username, "password": options.password})),
            StatusCode::OK,
        )
        .await?;
    api.token = Some(
        login["token"]
            .as_str()
            .context("the login answer has no token")?
            .to_owned(),
    );
    screen.step(&format!(
        "logged in as {} (role {}), token valid until {}",
        login["user"]["username"]
            .as_str()
            .unwrap_or(&options.username),
        login["user"]["role"].as_str().unwrap_or("?"),
        login["expires_at"].as_str().unwrap_or("?"),
    ));

    // A new task with the language's default files, then our main.py.
    prune_old_demo_tasks(&api, &mut screen, options.keep).await?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("coderun-demo {}", &suffix[..8]);
    let task = api
        .json(
            "POST /api/v1/tasks",
            api.request(Method::POST, "/api/v1/tasks").json(&json!({
                "name": name,
                "language": "python",
                "description": "Created by `just demo`: counts slowly and writes two output files.",
            })),
            StatusCode::CREATED,
        )
        .await?;
    let task_id = task["id"]
        .as_str()
        .context("the task has no id")?
        .to_owned();
    let defaults: Vec<&str> = task["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["path"].as_str())
        .collect();
    screen.step(&format!(
        "created the Python task \"{name}\" ({task_id}) with the default files {}",
        defaults.join(", ")
    ));
    let source = program(options.steps, options.delay, options.exit_code);
    api.send(
        "PUT main.py",
        api.request(
            Method::PUT,
            &format!("/api/v1/tasks/{task_id}/files/main.py"),
        )
        .header("content-type", "text/plain; charset=utf-8")
        .body(source.clone()),
        // 200 replaced (main.py is one of the default files), 201 created.
        &[StatusCode::OK, StatusCode::CREATED],
    )
    .await?;
    screen.step(&format!(
        "saved main.py ({}): counts to {} with {} s pauses and writes $OUTPUT_DIR/result.txt",
        human_bytes(source.len() as u64),
        options.steps,
        options.delay
    ));

    // Submit.
    let submitted = api
        .json(
            "POST /api/v1/tasks/{id}/runs",
            api.request(Method::POST, &format!("/api/v1/tasks/{task_id}/runs"))
                .json(&json!({"remarks": "submitted by coderun-demo"})),
            StatusCode::ACCEPTED,
        )
        .await?;
    let run_id = submitted["id"]
        .as_str()
        .context("the run has no id")?
        .to_owned();
    screen.step(&format!(
        "submitted run {run_id} (202 Accepted): `{}`, spec {} ({})",
        submitted["command"].as_str().unwrap_or("?"),
        submitted["spec"]["name"].as_str().unwrap_or("?"),
        submitted["spec"]["description"].as_str().unwrap_or("?"),
    ));
    println!();
    screen.line(&screen.paint(
        "1",
        if options.poll {
            "phases and log (log polled from /log?page=N)"
        } else {
            "phases and log (live from /log/stream)"
        },
    ));

    let api = std::sync::Arc::new(api);
    let followed = follow(api.clone(), &mut screen, &run_id, options.poll).await?;
    let run = followed.run;
    let status = run["status"].as_str().unwrap_or("?").to_owned();
    println!();

    // The outcome, in numbers.
    let seconds = |a: &str, b: &str| {
        Some(epoch_seconds(run[b].as_str()?)? - epoch_seconds(run[a].as_str()?)?)
    };
    let mut outcome = format!("run {status}");
    if let Some(code) = run["exit_code"].as_i64() {
        outcome.push_str(&format!(", exit code {code}"));
    }
    if let Some(reason) = run["reason"].as_str() {
        outcome.push_str(&format!(", reason {reason}"));
    }
    if let Some(wait) = seconds("queued_at", "started_at") {
        outcome.push_str(&format!("; waited {wait:.2} s to start"));
    }
    if let Some(ran) = seconds("started_at", "finished_at") {
        outcome.push_str(&format!(", ran {ran:.2} s"));
    }
    outcome.push_str(&format!("; {} log lines", followed.lines));
    let colour = if status == "succeeded" {
        "1;32"
    } else {
        "1;31"
    };
    screen.line(&screen.paint(colour, &outcome));

    // Where the log is, and the log itself through the presigned URL.
    let response = api
        .send(
            "GET /api/v1/runs/{id}/log/download",
            api.request(Method::GET, &format!("/api/v1/runs/{run_id}/log/download")),
            &[StatusCode::FOUND],
        )
        .await;
    match response {
        Ok(response) => {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .context("the 302 has no Location")?
                .to_owned();
            screen.line(&format!(
                "log        GET {base}/api/v1/runs/{run_id}/log/download"
            ));
            screen.line(&format!("           → 302 {location}"));
            let log = client
                .get(&location)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .context("downloading the log")?;
            if !log.status().is_success() {
                bail!(
                    "downloading the log from its presigned URL: {}",
                    log.status()
                );
            }
            let bytes = log.bytes().await?;
            let expected = run["log_bytes"].as_u64();
            screen.line(&format!(
                "           downloaded {} ({} lines){}",
                human_bytes(bytes.len() as u64),
                bytes.iter().filter(|&&b| b == b'\n').count(),
                match expected {
                    Some(n) if n == bytes.len() as u64 => ", as recorded with the run".to_owned(),
                    Some(n) => format!(", but the run recorded {n} bytes"),
                    None => String::new(),
                }
            ));
        }
        Err(e) => screen.line(&format!(
            "log        {}",
            screen.paint("31", &format!("{e:#}"))
        )),
    }

    // The outputs, each downloaded through its presigned URL.
    let outputs = api
        .json(
            "GET /api/v1/runs/{id}/outputs",
            api.request(Method::GET, &format!("/api/v1/runs/{run_id}/outputs")),
            StatusCode::OK,
        )
        .await?;
    // The contract pages lists (`{items, …}`); a bare array is read as well.
    let outputs = outputs["items"]
        .as_array()
        .or(outputs.as_array())
        .cloned()
        .unwrap_or_default();
    screen.line(&format!(
        "outputs    GET {base}/api/v1/runs/{run_id}/outputs → {} file(s)",
        outputs.len()
    ));
    for output in &outputs {
        let path = output["path"].as_str().unwrap_or("?");
        let size = output["size"].as_u64().unwrap_or(0);
        let url = output["url"].as_str().unwrap_or_default();
        screen.line(&format!("  {path} ({})  {url}", human_bytes(size)));
        let fetched = client
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match fetched {
            Ok(r) if r.status().is_success() => {
                let body = r.bytes().await.unwrap_or_default();
                let preview = String::from_utf8_lossy(&body[..body.len().min(200)])
                    .trim_end()
                    .replace('\n', " ⏎ ");
                let check = if body.len() as u64 == size {
                    ""
                } else {
                    " (size differs from the listing!)"
                };
                screen.line(&format!(
                    "    {}{check}",
                    screen.paint("2", &format!("» {preview}"))
                ));
            }
            Ok(r) => screen.line(&format!(
                "    {}",
                screen.paint("31", &format!("download failed: {}", r.status()))
            )),
            Err(e) => screen.line(&format!(
                "    {}",
                screen.paint("31", &format!("download failed: {e}"))
            )),
        }
    }
    println!();
    println!("task       {base}/api/v1/tasks/{task_id}");
    println!("run        {base}/api/v1/runs/{run_id}");

    Ok(if status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_split_across_chunks() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"event: line\nid: 1\nda").is_empty());
        let events = parser.push(b"ta: hello\n\n: keep-alive\n\nevent: line\nid: 2\ndata: a\ndata: b\n\nevent: end\ndata: {\"status\":\"succeeded\"}\n\n");
        assert_eq!(
            events,
            [
                SseEvent {
                    event: "line".into(),
                    data: "hello".into(),
                    id: Some("1".into())
                },
                SseEvent {
                    event: "line".into(),
                    data: "a\nb".into(),
                    id: Some("2".into())
                },
                SseEvent {
                    event: "end".into(),
                    data: "{\"status\":\"succeeded\"}".into(),
                    id: Some("2".into())
                },
            ]
        );
    }

    #[test]
    fn an_empty_line_is_still_a_line_event() {
        let mut parser = SseParser::default();
        let events = parser.push(b"event: line\nid: 3\ndata: \n\n");
        assert_eq!(
            events,
            [SseEvent {
                event: "line".into(),
                data: String::new(),
                id: Some("3".into())
            }]
        );
    }

    #[test]
    fn rfc3339_times_give_differences_in_seconds() {
        let a = epoch_seconds("2026-11-22T00:52:55.049371Z").unwrap();
        let b = epoch_seconds("2026-11-22T00:52:56.549371Z").unwrap();
        assert!((b - a - 1.5).abs() < 1e-6);
        assert_eq!(epoch_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(epoch_seconds("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(
            epoch_seconds("2000-03-01T01:00:00+01:00"),
            Some(951_868_800.0)
        );
        assert_eq!(epoch_seconds("nonsense"), None);
    }
}
