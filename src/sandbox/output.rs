//! Capped capture of a task's stdout and stderr, the same for every tier.

/// Keeps the first `cap` bytes of a stream and counts the rest.
#[derive(Debug)]
pub(crate) struct OutputCapture {
    kept: Vec<u8>,
    cap: usize,
    dropped: u64,
}

/// The line appended to a stream that went over its cap.
pub(super) const TRUNCATION_MARK: &str = "[lattice: output truncated:";

impl OutputCapture {
    pub(crate) fn new(cap: usize) -> Self {
        OutputCapture {
            kept: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.kept.len());
        let take = room.min(bytes.len());
        self.kept.extend_from_slice(&bytes[..take]);
        self.dropped += (bytes.len() - take) as u64;
    }

    /// Counts `n` bytes that were dropped before they got here.
    pub(crate) fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    /// The bytes kept so far.
    pub(crate) fn kept(&self) -> &[u8] {
        &self.kept
    }

    /// The last few hundred bytes kept, trimmed: what a crashing program said last.
    pub(crate) fn tail(&self) -> String {
        let start = self.kept.len().saturating_sub(500);
        String::from_utf8_lossy(&self.kept[start..])
            .trim()
            .to_string()
    }

    /// `"; stderr ends with: ..."` to append to an error message, or `""`.
    pub(crate) fn tail_note(&self) -> String {
        match self.tail() {
            tail if tail.is_empty() => String::new(),
            tail => format!("; stderr ends with: {tail}"),
        }
    }

    pub(crate) fn is_truncated(&self) -> bool {
        self.dropped > 0
    }

    /// Nothing was written to the stream yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.dropped == 0
    }

    /// The kept text (invalid UTF-8 replaced), marked if anything was dropped.
    pub(crate) fn finish(self) -> String {
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "{TRUNCATION_MARK} {} more bytes dropped after the first {}]\n",
                self.dropped, self.cap
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_marks_the_cut() {
        let mut capture = OutputCapture::new(5);
        capture.push(b"abc");
        capture.push(b"defgh");
        assert!(capture.is_truncated());
        let text = capture.finish();
        assert!(text.starts_with("abcde\n"));
        assert!(text.contains("3 more bytes dropped"));
    }

    #[test]
    fn under_the_cap_nothing_is_marked() {
        let mut capture = OutputCapture::new(10);
        capture.push("héllo".as_bytes());
        assert_eq!(capture.finish(), "héllo");
    }
}
