//! A finished run's `log.txt` and its line index `log.idx`, so that a page of the log costs
//! ranged reads of the lines asked for, not a read of the whole log.
//!
//! Lines are split on `\n`; the empty piece after a final newline is no line. The index holds
//! a header (a magic, the number of lines, the number of bytes) and then the byte offset of
//! every [`STRIDE`]-th line (lines 1, 1 + STRIDE, …), little-endian u64s. A log stored without
//! an index (before indexes existed, or between the two writes) is read whole.

use bytes::Bytes;
use uuid::Uuid;

use crate::objects::RunObjects;
use crate::storage::{Error, Storage};

/// Lines between two indexed offsets: a page reads at most this many lines it does not need.
pub const STRIDE: u64 = 64;
const MAGIC: &[u8; 8] = b"CRLOGIX1";
const HEADER: u64 = 24;

/// The index of `log`.
pub fn index(log: &[u8]) -> Vec<u8> {
    let mut offsets = Vec::new();
    let mut lines = 0u64;
    let mut line_start = 0usize;
    let mut at_line_start = true;
    for (i, byte) in log.iter().enumerate() {
        if at_line_start {
            if lines % STRIDE == 0 {
                offsets.push(line_start as u64);
            }
            lines += 1;
            at_line_start = false;
        }
        if *byte == b'\n' {
            line_start = i + 1;
            at_line_start = true;
        }
    }
    let mut out = Vec::with_capacity(HEADER as usize + offsets.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&lines.to_le_bytes());
    out.extend_from_slice(&(log.len() as u64).to_le_bytes());
    for offset in offsets {
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out
}

/// Stores `log` as the run's `log.txt`, then its index.
pub async fn store(storage: &Storage, run_id: Uuid, log: Bytes) -> Result<(), Error> {
    let objects = RunObjects::new(run_id);
    let idx = index(&log);
    // Both at once: the run ends only after both are stored, so no reader sees one without
    // the other.
    let (log_key, index_key) = (objects.log(), objects.log_index());
    tokio::try_join!(
        storage.put(&log_key, log, "text/plain; charset=utf-8"),
        storage.put(&index_key, Bytes::from(idx), "application/octet-stream"),
    )?;
    Ok(())
}

/// Some lines of a stored log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines {
    /// Lines in the whole log.
    pub total: u64,
    /// The lines asked for that exist.
    pub lines: Vec<String>,
}

/// Lines `from..from + count` (1-based) of the run's stored log; `None` when no log is stored.
pub async fn read(
    storage: &Storage,
    run_id: Uuid,
    from: u64,
    count: u64,
) -> Result<Option<Lines>, Error> {
    let objects = RunObjects::new(run_id);
    let from = from.max(1);
    let Some(header) = storage
        .get_range_optional(&objects.log_index(), 0, HEADER)
        .await?
    else {
        return read_whole(storage, &objects, from, count).await;
    };
    let Some((total, bytes)) = parse_header(&header) else {
        tracing::warn!(%run_id, "the log's index is damaged; reading the log whole");
        return read_whole(storage, &objects, from, count).await;
    };
    if from > total || count == 0 {
        return Ok(Some(Lines {
            total,
            lines: Vec::new(),
        }));
    }
    let last = from.saturating_add(count - 1).min(total);
    let entries = total.div_ceil(STRIDE);
    let first_block = (from - 1) / STRIDE;
    // The block after the one holding `last`: its first offset ends the range.
    let end_block = (last - 1) / STRIDE + 1;
    let read_to = end_block.min(entries - 1);
    let offsets = storage
        .get_range(
            &objects.log_index(),
            HEADER + 8 * first_block,
            HEADER + 8 * (read_to + 1),
        )
        .await?;
    let offset = |k: u64| -> u64 {
        let at = ((k - first_block) * 8) as usize;
        offsets
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .unwrap_or(bytes)
    };
    let start = offset(first_block);
    let end = if end_block < entries {
        offset(end_block)
    } else {
        bytes
    };
    let chunk = storage.get_range(&objects.log(), start, end).await?;
    let skip = (from - 1 - first_block * STRIDE) as usize;
    let lines = split_lines(&chunk)
        .into_iter()
        .skip(skip)
        .take((last - from + 1) as usize)
        .collect();
    Ok(Some(Lines { total, lines }))
}

fn parse_header(header: &[u8]) -> Option<(u64, u64)> {
    if header.len() != HEADER as usize || &header[..8] != MAGIC {
        return None;
    }
    let total = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let bytes = u64::from_le_bytes(header[16..24].try_into().ok()?);
    Some((total, bytes))
}

async fn read_whole(
    storage: &Storage,
    objects: &RunObjects,
    from: u64,
    count: u64,
) -> Result<Option<Lines>, Error> {
    let Some(log) = storage.get_optional(&objects.log()).await? else {
        return Ok(None);
    };
    let all = split_lines(&log);
    let total = all.len() as u64;
    let lines = all
        .into_iter()
        .skip(usize::try_from(from - 1).unwrap_or(usize::MAX))
        .take(usize::try_from(count).unwrap_or(usize::MAX))
        .collect();
    Ok(Some(Lines { total, lines }))
}

/// `bytes` split into lines on `\n`; the empty piece after a final newline is no line.
pub fn split_lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    if lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(idx: &[u8]) -> (u64, u64, Vec<u64>) {
        let (total, bytes) = parse_header(&idx[..HEADER as usize]).unwrap();
        let offsets = idx[HEADER as usize..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (total, bytes, offsets)
    }

    #[test]
    fn log_text_splits_on_newlines_without_a_phantom_last_line() {
        assert_eq!(split_lines(b"a\nb\n"), ["a", "b"]);
        assert_eq!(split_lines(b"a\nb"), ["a", "b"]);
        assert_eq!(split_lines(b"a\n\n"), ["a", ""]);
        assert!(split_lines(b"").is_empty());
        assert_eq!(split_lines(b"\n"), [""]);
    }

    #[test]
    fn the_index_counts_lines_as_the_splitter_does_and_points_at_every_strides_first_line() {
        for log in [&b""[..], b"\n", b"a", b"a\n", b"a\n\nb", b"\n\n\n\n"] {
            let (total, bytes, _) = offsets(&index(log));
            assert_eq!(total, split_lines(log).len() as u64, "{log:?}");
            assert_eq!(bytes, log.len() as u64);
        }
        let log: String = (1..=200)
            .map(|n| format!("{}\n", "x".repeat(n % 7)))
            .collect();
        let (total, _, offsets) = offsets(&index(log.as_bytes()));
        assert_eq!(total, 200);
        assert_eq!(offsets.len(), 4);
        let starts: Vec<u64> = std::iter::once(0)
            .chain(
                log.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'\n')
                    .map(|(i, _)| i as u64 + 1),
            )
            .collect();
        for (k, offset) in offsets.iter().enumerate() {
            assert_eq!(*offset, starts[k * STRIDE as usize]);
        }
    }
}
