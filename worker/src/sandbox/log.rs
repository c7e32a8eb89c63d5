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

/// Splits a byte stream into lines (without the `\n`), cutting lines longer than `max` at a
/// UTF-8 character boundary where there is one.
pub(super) struct LineSplitter {
    max: usize,
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            max: max.max(4),
            partial: Vec::new(),
        }
    }

    pub fn push(&mut self, mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&data[..i]);
                    self.drain_long(&mut out);
                    out.push(std::mem::take(&mut self.partial));
                    data = &data[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(data);
                    self.drain_long(&mut out);
                    data = &[];
                }
            }
        }
        out
    }

    /// What is left after the last newline, if anything.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }

    fn drain_long(&mut self, out: &mut Vec<Vec<u8>>) {
        while self.partial.len() > self.max {
            let mut cut = self.max;
            // Back off over UTF-8 continuation bytes (at most 3) to a character boundary.
            while cut > self.max - 3 && self.partial[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            let rest = self.partial.split_off(cut);
            out.push(std::mem::replace(&mut self.partial, rest));
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = LineSplitter::new(100);
        assert_eq!(s.push(b"ab"), Vec::<Vec<u8>>::new());
        assert_eq!(
            s.push(b"c\nd\n\ne"),
            vec![b"abc".to_vec(), b"d".to_vec(), b"".to_vec()]
        );
        assert_eq!(s.finish(), Some(b"e".to_vec()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn long_lines_are_cut_at_char_boundaries() {
        let mut s = LineSplitter::new(8);
        let line = "aaaaaaaéééé\n"; // 7 ascii, then 2-byte chars
        let out = s.push(line.as_bytes());
        let joined: Vec<u8> = out.concat();
        assert_eq!(joined, "aaaaaaaéééé".as_bytes());
        assert!(
            out.iter()
                .all(|l| l.len() <= 8 && std::str::from_utf8(l).is_ok()),
            "{out:?}"
        );
        assert_eq!(out.len(), 2);
    }
}
