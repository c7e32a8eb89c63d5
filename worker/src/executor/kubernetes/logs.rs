//! The program's log: followed into the live log while the pod runs, read whole at the end.
//!
//! Only the worker that owns a run streams it (one streamer per run per worker); a streamer
//! that starts late — after a reconnect, or on a worker adopting the run — skips the lines the
//! live log already holds, since a container's log is the same from its start every time it is
//! read. The live log is capped at `log_max_bytes`; past it the streamer raises `over_cap` and
//! the run ends `output_limit_exceeded`.
//!
//! The rule it keeps: the worker's memory is bounded whatever the program prints. Bytes are
//! counted as they arrive (not per finished line), lines longer than 64 KiB are split exactly
//! as the local executor splits them, and a line that never ends is never held whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use tokio::sync::Notify;
use uuid::Uuid;

use super::job::MAIN;
use super::streams::LogStreams;
use crate::lines::{LineSplitter, MAX_LINE_BYTES};
use crate::supervisor::Supervisor;

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
    streams: Arc<LogStreams>,
    pod: String,
    supervisor: Supervisor,
    run: Uuid,
    cap: u64,
    state: Arc<StreamState>,
    changed: Arc<Notify>,
) {
    // Lines the live log holds already (from this worker before a reconnect, or another).
    // The futures of the calls made once per follow are boxed: inline, they would make every
    // follower's task as large as the largest of them (12 KiB in all) for as long as it streams.
    let mut written = match Box::pin(supervisor.live_log().len(run)).await {
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
            // The stream's place on a connection, held while it is read.
            let stream = streams.acquire()?;
            let reader = Box::pin(stream.pods.log_stream(&pod, &params)).await?;
            pump(reader, &supervisor, run, &mut written, cap).await
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

#[derive(Debug, PartialEq, Eq)]
enum Pump {
    Ended,
    OverCap,
}

/// Where a pump appends lines: the live log (a trait so the pump can be tested alone).
#[async_trait]
trait LineSink: Sync {
    /// Appends `lines` as lines `first`, `first + 1`, ….
    async fn append(&self, run: Uuid, first: u64, lines: &[String]) -> anyhow::Result<()>;
}

#[async_trait]
impl LineSink for Supervisor {
    async fn append(&self, run: Uuid, first: u64, lines: &[String]) -> anyhow::Result<()> {
        self.log_lines(run, first, lines).await
    }
}

/// Reads one log stream (which starts at the container's start) chunk by chunk as the HTTP body
/// brings them, splits it into
/// lines, skips the first `written` (already in the live log) and appends the rest in batches.
/// Past `cap` bytes of the stream it stops reading; the lines before the cap are kept (the
/// last one cut at the cap, as `log.txt` is).
async fn pump(
    reader: impl futures::AsyncBufRead + Unpin,
    sink: &impl LineSink,
    run: Uuid,
    written: &mut u64,
    cap: u64,
) -> anyhow::Result<Pump> {
    let mut seen = 0u64;
    let mut bytes = 0u64;
    // Grows with what one flush carries, not reserved up front: a thousand followers of quiet
    // programs hold next to nothing.
    let mut batch: Vec<String> = Vec::new();
    let mut flush_at = tokio::time::Instant::now() + FLUSH;
    let mut reader = reader;
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    let mut take = |line: Vec<u8>, batch: &mut Vec<String>, written: u64| {
        seen += 1;
        if seen > written + batch.len() as u64 {
            let mut line = line;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            batch.push(String::from_utf8_lossy(&line).into_owned());
        }
    };
    let outcome = loop {
        // The reader's own buffer (the HTTP body's current chunk) is read in place: no buffer of
        // our own per follower. Dropping a pending fill loses nothing, so a flush may
        // interrupt it.
        let read = tokio::time::timeout_at(flush_at, reader.fill_buf()).await;
        match read {
            Err(_) => {} // time to flush
            Ok(Err(e)) => {
                flush(sink, run, written, &mut batch).await;
                return Err(e.into());
            }
            Ok(Ok([])) => {
                if let Some(rest) = splitter.finish() {
                    take(rest, &mut batch, *written);
                }
                break Pump::Ended;
            }
            Ok(Ok(chunk)) => {
                let n = chunk.len();
                let room = cap.saturating_sub(bytes);
                let kept = (n as u64).min(room) as usize;
                bytes += kept as u64;
                for line in splitter.push(&chunk[..kept]) {
                    take(line, &mut batch, *written);
                }
                reader.consume_unpin(n);
                if kept < n {
                    if let Some(rest) = splitter.finish() {
                        take(rest, &mut batch, *written);
                    }
                    break Pump::OverCap;
                }
            }
        }
        if batch.len() >= BATCH || tokio::time::Instant::now() >= flush_at {
            flush(sink, run, written, &mut batch).await;
            flush_at = tokio::time::Instant::now() + FLUSH;
        }
    };
    flush(sink, run, written, &mut batch).await;
    Ok(outcome)
}

async fn flush(sink: &impl LineSink, run: Uuid, written: &mut u64, batch: &mut Vec<String>) {
    if batch.is_empty() {
        return;
    }
    match sink.append(run, *written + 1, batch).await {
        Ok(()) => *written += batch.len() as u64,
        Err(e) => tracing::warn!(%run, error = %e, "cannot append to the live log"),
    }
    batch.clear();
    // A burst of output does not keep its batch's room for the rest of the run.
    batch.shrink_to(BATCH / 16);
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
    supervisor: &Supervisor,
    run: Uuid,
    cap: u64,
) -> anyhow::Result<(Vec<u8>, bool)> {
    let live_log = supervisor.live_log();
    let len = live_log.len(run).await?;
    let mut log = Vec::new();
    let mut from = 1;
    while from <= len {
        let to = (from + 999).min(len);
        for line in live_log.range(run, from, to).await? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    /// Collects what the pump appends.
    #[derive(Default)]
    struct Collected(Mutex<Vec<(u64, String)>>);

    #[async_trait]
    impl LineSink for Collected {
        async fn append(&self, _: Uuid, first: u64, lines: &[String]) -> anyhow::Result<()> {
            let mut all = self.0.lock().unwrap();
            for (i, line) in lines.iter().enumerate() {
                all.push((first + i as u64, line.clone()));
            }
            Ok(())
        }
    }

    /// A log that never ends and never has a newline; counts what it served.
    struct Endless {
        served: u64,
    }

    impl futures::AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            buf.fill(b'x');
            self.served += buf.len() as u64;
            Poll::Ready(Ok(buf.len()))
        }
    }

    #[tokio::test]
    async fn a_line_that_never_ends_is_split_and_stops_at_the_cap() {
        let sink = Collected::default();
        let mut reader = Endless { served: 0 };
        let mut written = 0;
        let cap = 1024 * 1024;
        let buffered = futures::io::BufReader::with_capacity(64 * 1024, &mut reader);
        let outcome = pump(buffered, &sink, Uuid::nil(), &mut written, cap)
            .await
            .unwrap();
        assert_eq!(outcome, Pump::OverCap);
        // It stopped reading one chunk past the cap at most: nothing was held beyond that.
        assert!(reader.served <= cap + 64 * 1024, "{}", reader.served);
        let lines = sink.0.into_inner().unwrap();
        assert_eq!(lines.len(), 16, "1 MiB in pieces of 64 KiB");
        assert!(lines.iter().all(|(_, l)| l.len() == MAX_LINE_BYTES));
        let numbers: Vec<u64> = lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (1..=16).collect::<Vec<_>>());
        assert_eq!(written, 16);
    }

    #[tokio::test]
    async fn a_resumed_stream_skips_the_lines_already_written_counting_split_pieces() {
        let log = format!("a\r\n{}\nb\nlast", "y".repeat(MAX_LINE_BYTES + 10));
        let sink = Collected::default();
        let mut written = 2; // "a" and the first piece of the long line
        // Chunks of any size give the same lines.
        let reader = futures::io::Cursor::new(log.into_bytes());
        let outcome = pump(reader, &sink, Uuid::nil(), &mut written, 1 << 20)
            .await
            .unwrap();
        assert_eq!(outcome, Pump::Ended);
        let lines = sink.0.into_inner().unwrap();
        assert_eq!(
            lines,
            [
                (3, "y".repeat(10)),
                (4, "b".to_owned()),
                (5, "last".to_owned())
            ]
        );
        assert_eq!(written, 5);
    }
}
