//! Splitting a program's output into log lines, the same way for every executor.
//!
//! The rule it keeps: a line never grows past its maximum in memory, however long the
//! program writes without a newline. A longer line is cut into pieces of at most the maximum
//! (at a UTF-8 character boundary where there is one), each piece its own log line, and the
//! cut positions depend only on the bytes, not on how they arrive — so two readers of the same
//! output count the same lines.

/// The longest log line; longer ones are split.
pub(crate) const MAX_LINE_BYTES: usize = 64 * 1024;

/// Splits a byte stream into lines (without the `\n`), cutting lines longer than `max` at a
/// UTF-8 character boundary where there is one.
pub(crate) struct LineSplitter {
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
