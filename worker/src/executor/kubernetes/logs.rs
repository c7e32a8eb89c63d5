//! The program's log: followed into the live log while the pod runs, read whole at the end.
//!
//! Only the worker that owns a run streams it (one streamer per run per worker); a streamer
//! that starts late — after a reconnect, or on a worker adopting the run — skips the lines the
//! live log already holds, since a container's log is the same from its start every time it is
//! read. The live log is capped at `log_max_bytes`; past it the streamer raises `over_cap` and
//! the run ends `output_limit_exceeded`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use tokio::sync::Notify;
use uuid::Uuid;

use super::job::MAIN;
use crate::recorder::Recorder;

/// Lines sent to the live log in one round trip at most.
const BATCH: usize = 256;
/// How long a batch may wait to fill.
const FLUSH: Duration = Duration::from_millis(100);

/// What a streamer reports back to its run.
#[derive(Default)]
pub struct StreamState {
    /// The log passed `log_max_bytes`.
    pub over_cap: AtomicBool,
}

/// Follows the main container's log of `pod` into the live log until it ends or the task is
/// aborted; reopens a broken stream. `changed` is notified when the log passes its cap.
pub async fn follow(
    pods: Api<Pod>,
    pod: String,
    recorder: Recorder,
    run: Uuid,
    cap: u64,
    state: Arc<StreamState>,
    changed: Arc<Notify>,
) {
    // Lines the live log holds already (from this worker before a reconnect, or another).
    let mut written = match recorder.live_log.len(run).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(%run, error = %e, "cannot read the live log's length");
            0
        }
    };
    let mut attempts = 0u32;
    loop {
        let params = LogParams {
            container: Some(MAIN.to_owned()),
            follow: true,
            ..LogParams::default()
        };
        let result = async {
            let reader = pods.log_stream(&pod, &params).await?;
            pump(reader, &recorder, run, &mut written, cap).await
        }
        .await;
        match result {
            // The container ended (or the stream was dropped: the run's actor starts a new
            // streamer if the pod still runs).
            Ok(Pump::Ended) => return,
            Ok(Pump::OverCap) => {
                state.over_cap.store(true, Ordering::SeqCst);
                changed.notify_one();
                return;
            }
            Err(e) => {
                attempts += 1;
                tracing::debug!(%run, %pod, error = %e, attempts, "the log stream broke; reopening");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempts.min(10)))).await;
            }
        }
    }
}

enum Pump {
    Ended,
    OverCap,
}

/// Reads lines from one log stream (which starts at the container's start), skipping the first
/// `written` (already in the live log) and appending the rest in batches.
async fn pump(
    reader: impl futures::AsyncBufRead + Unpin,
    recorder: &Recorder,
    run: Uuid,
    written: &mut u64,
    cap: u64,
) -> anyhow::Result<Pump> {
    let mut seen = 0u64;
    let mut bytes = 0u64;
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    let mut flush_at = tokio::time::Instant::now() + FLUSH;
    let mut reader = reader;
    // Kept across flush timeouts: `read_until` appends what it read before being interrupted.
    let mut buf = Vec::new();
    let outcome = loop {
        let read = tokio::time::timeout_at(flush_at, reader.read_until(b'\n', &mut buf)).await;
        let mut last = false;
        match read {
            Err(_) => {} // time to flush
            Ok(Err(e)) => {
                flush(recorder, run, written, &mut batch).await;
                return Err(e.into());
            }
            Ok(Ok(0)) if buf.is_empty() => break Pump::Ended,
            Ok(Ok(_)) => {
                // Without a final newline, this is the stream's last line.
                last = buf.last() != Some(&b'\n');
                let mut line = std::mem::take(&mut buf);
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                seen += 1;
                bytes += line.len() as u64 + 1;
                if bytes > cap {
                    break Pump::OverCap;
                }
                if seen > *written + batch.len() as u64 {
                    batch.push(String::from_utf8_lossy(&line).into_owned());
                }
            }
        }
        if last {
            break Pump::Ended;
        }
        if batch.len() >= BATCH || tokio::time::Instant::now() >= flush_at {
            flush(recorder, run, written, &mut batch).await;
            flush_at = tokio::time::Instant::now() + FLUSH;
        }
    };
    flush(recorder, run, written, &mut batch).await;
    Ok(outcome)
}

async fn flush(recorder: &Recorder, run: Uuid, written: &mut u64, batch: &mut Vec<String>) {
    if batch.is_empty() {
        return;
    }
    match recorder.log_lines(run, *written + 1, batch).await {
        Ok(()) => *written += batch.len() as u64,
        Err(e) => tracing::warn!(%run, error = %e, "cannot append to the live log"),
    }
    batch.clear();
}

/// The whole log of the main container, cut at `cap` bytes: `(log, truncated)`.
pub async fn read_all(pods: &Api<Pod>, pod: &str, cap: u64) -> kube::Result<(Vec<u8>, bool)> {
    let params = LogParams {
        container: Some(MAIN.to_owned()),
        limit_bytes: Some(cap as i64 + 1),
        ..LogParams::default()
    };
    let log = pods.logs(pod, &params).await?;
    Ok(cut(log.into_bytes(), cap))
}

/// The live log as a file's bytes (when the pod's own log is gone), cut at `cap`.
pub async fn from_live_log(
    recorder: &Recorder,
    run: Uuid,
    cap: u64,
) -> anyhow::Result<(Vec<u8>, bool)> {
    let len = recorder.live_log.len(run).await?;
    let mut log = Vec::new();
    let mut from = 1;
    while from <= len {
        let to = (from + 999).min(len);
        for line in recorder.live_log.range(run, from, to).await? {
            log.extend_from_slice(line.as_bytes());
            log.push(b'\n');
        }
        from = to + 1;
    }
    Ok(cut(log, cap))
}

fn cut(mut log: Vec<u8>, cap: u64) -> (Vec<u8>, bool) {
    let truncated = log.len() as u64 > cap;
    if truncated {
        log.truncate(cap as usize);
    }
    (log, truncated)
}
