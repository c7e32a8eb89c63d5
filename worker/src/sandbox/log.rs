//! The run's log: reads the one pipe that is both stdout and stderr, splits it into lines,
//! sends each line to the caller and appends it to `log.txt`.
//!
//! The rule it keeps: the log never grows past its cap. The byte that would cross
//! `log_max_bytes` is not kept; instead the run is tripped (killed as
//! `OutputLimitExceeded`) and the log ends with a marker line saying it was cut. The file is
//! opened without following a symlink.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::{SandboxError, Trip};
use crate::lines::LineSplitter;

#[derive(Debug, Clone, Copy)]
pub(super) struct Cap {
    pub max_bytes: u64,
    pub max_line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Summary {
    /// Bytes of program output kept.
    pub bytes: u64,
    pub truncated: bool,
}

/// The marker line that ends a cut log.
pub(super) fn cut_marker(max_bytes: u64) -> String {
    format!("[coderun] log cut at {max_bytes} bytes: output limit exceeded, the program was killed")
}

pub(super) async fn open_log_file(path: &Path) -> Result<tokio::fs::File, SandboxError> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .await
        .map_err(SandboxError::io(format!("opening {}", path.display())))
}

/// Reads the pipe to its end (every writer gone). Never stops reading early, so a writer is
/// never blocked on a full pipe; what lies beyond the cap is read and dropped.
pub(super) async fn pump(
    mut reader: tokio::net::unix::pipe::Receiver,
    lines: mpsc::Sender<String>,
    file: tokio::fs::File,
    cap: Cap,
    trip: mpsc::Sender<Trip>,
) -> Result<Summary, SandboxError> {
    let mut sink = Sink {
        lines: Some(lines),
        file: BufWriter::new(file),
    };
    let mut splitter = LineSplitter::new(cap.max_line);
    let mut kept: u64 = 0;
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SandboxError::io("reading the log pipe")(e)),
        };
        if truncated {
            continue;
        }
        let room = cap.max_bytes - kept;
        let take = (n as u64).min(room) as usize;
        kept += take as u64;
        for line in splitter.push(&buf[..take]) {
            sink.line(line).await?;
        }
        if take < n {
            truncated = true;
            // The channel has room for every trip; a full or closed one means the run is
            // already being killed.
            let _ = trip.try_send(Trip::OutputLimit);
        }
    }
    if let Some(rest) = splitter.finish() {
        sink.line(rest).await?;
    }
    if truncated {
        sink.line(cut_marker(cap.max_bytes).into_bytes()).await?;
    }
    sink.file
        .flush()
        .await
        .map_err(SandboxError::io("writing log.txt"))?;
    Ok(Summary {
        bytes: kept,
        truncated,
    })
}

struct Sink {
    /// `None` once the receiver is gone: the file still gets every line.
    lines: Option<mpsc::Sender<String>>,
    file: BufWriter<tokio::fs::File>,
}

impl Sink {
    async fn line(&mut self, mut bytes: Vec<u8>) -> Result<(), SandboxError> {
        self.file
            .write_all(&bytes)
            .await
            .map_err(SandboxError::io("writing log.txt"))?;
        self.file
            .write_all(b"\n")
            .await
            .map_err(SandboxError::io("writing log.txt"))?;
        if let Some(tx) = &self.lines {
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            let text = match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            if tx.send(text).await.is_err() {
                self.lines = None;
            }
        }
        Ok(())
    }
}
