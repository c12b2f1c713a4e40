//! What a tier does for a session: keep one interpreter (or process, or
//! container) for it and run the driver's session requests there, one at
//! a time. `crate::session` builds the public `Session` on this.

use super::host_calls::HostCalls;
use super::{resolve_mounts, tier, CancelToken, OutputCapture, SandboxConfig, SandboxOutput};
use crate::task::TaskError;

/// What state a session is in after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionState {
    /// The call ended on its own (with a result or an exception); the
    /// session holds what the call left.
    Ready,
    /// A limit or a cancel stopped the call (as `KeyboardInterrupt` or
    /// `MemoryError` in the code): the session goes on with the state it
    /// had when the call was stopped.
    Interrupted,
    /// A limit stopped the call and the session was put back to its state
    /// before the call.
    RolledBack,
    /// The session can't continue (its interpreter was stopped mid-step,
    /// or its process died), or it was closed: every later call fails.
    Closed,
}

impl SessionState {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Ready => "ready",
            SessionState::Interrupted => "interrupted",
            SessionState::RolledBack => "rolled_back",
            SessionState::Closed => "closed",
        }
    }
}

/// One call's output and the state it left the session in.
pub(crate) struct SessionRun {
    pub output: SandboxOutput,
    pub state: SessionState,
}

/// The state a call that came back (its interpreter still whole) left the
/// session in: interrupted by a limit or a cancel, closed if its driver
/// failed (the code broke it), else ready.
pub(crate) fn state_after(output: &SandboxOutput) -> SessionState {
    use crate::task::ErrorKind;
    match output.result.as_ref().map_err(TaskError::kind) {
        Err(ErrorKind::Timeout | ErrorKind::MemoryLimit | ErrorKind::Cancelled) => {
            SessionState::Interrupted
        }
        Err(ErrorKind::Internal) => SessionState::Closed,
        _ => SessionState::Ready,
    }
}

/// A tier's hold on one session; dropping it frees everything it holds.
pub(crate) trait TierSession: Send {
    /// Runs one driver request (an `op` request) under the per-call limits
    /// of `config`, serving its host-function calls through `host`.
    fn run(
        &mut self,
        request: &str,
        config: &SandboxConfig,
        cancel: &CancelToken,
        host: HostCalls,
    ) -> SessionRun;

    /// The session's state as bytes, for `restore` (wasm tier only).
    fn snapshot(&mut self) -> Result<Vec<u8>, TaskError> {
        Err(TaskError::unavailable(
            "snapshots are supported on the wasm tier only",
        ))
    }

    /// An independent copy of the session, under `config` (wasm tier only).
    fn fork(&mut self, config: &SandboxConfig) -> Result<Box<dyn TierSession>, TaskError> {
        Err(no_snapshots(config.tier))
    }
}

/// The error of a snapshot, restore or fork on a tier without them.
pub(crate) fn no_snapshots(level: crate::task::SandboxLevel) -> TaskError {
    TaskError::unavailable(format!(
        "session snapshots (snapshot, restore, fork) are supported on the wasm tier only, not on the {level} tier"
    ))
}

/// Opens a session on the tier `config` names (from `snapshot`, if
/// given), checked as a task's configuration is; returns the configuration
/// it runs under (mounts resolved).
pub(crate) fn open(
    config: &SandboxConfig,
    snapshot: Option<&[u8]>,
) -> Result<(Box<dyn TierSession>, SandboxConfig), TaskError> {
    let sandbox = tier(config.tier);
    sandbox.check_available()?;
    let config = SandboxConfig {
        mounts: resolve_mounts(config)?,
        ..config.clone()
    };
    sandbox.check_config(&config)?;
    let session = match snapshot {
        Some(bytes) => sandbox.restore_session(&config, bytes)?,
        None => sandbox.open_session(&config)?,
    };
    Ok((session, config))
}

// The frames of the driver's session mode (driver.py, `main_session`),
// shared by the process and docker tiers.

/// One stream of a call: its capture, and where its end mark is looked for.
pub(crate) struct CallStream {
    capture: OutputCapture,
    pending: Vec<u8>,
    /// The mark was seen: the call's output on this stream is complete.
    pub done: bool,
    carry_cap: usize,
}

impl CallStream {
    /// A stream keeping `cap` bytes of the call's output, and at most
    /// `carry_cap` after its end.
    pub(crate) fn new(cap: usize, carry_cap: usize) -> CallStream {
        CallStream {
            capture: OutputCapture::new(cap),
            pending: Vec::new(),
            done: false,
            carry_cap,
        }
    }

    /// Takes `bytes`; past the mark, they are the next call's (returned
    /// through `carry`, which keeps at most `carry_cap` bytes: a flood
    /// after a call's end can't grow the host).
    pub(crate) fn push(&mut self, bytes: &[u8], mark: &[u8], carry: &mut Vec<u8>) {
        if self.done {
            let room = self.carry_cap.saturating_sub(carry.len());
            carry.extend_from_slice(&bytes[..room.min(bytes.len())]);
            return;
        }
        self.pending.extend_from_slice(bytes);
        if let Some(at) = find(&self.pending, mark) {
            self.capture.push(&self.pending[..at]);
            let after = &self.pending[at + mark.len()..];
            carry.extend_from_slice(&after[..after.len().min(self.carry_cap)]);
            self.pending.clear();
            self.done = true;
            return;
        }
        // Keep what could be the start of the mark.
        let keep = mark.len().saturating_sub(1).min(self.pending.len());
        let flush = self.pending.len() - keep;
        self.capture.push(&self.pending[..flush]);
        self.pending.drain(..flush);
    }

    /// Goes on capturing after a mark that was not the call's end (a host
    /// call followed it, taken out of `carry`): what is left in `carry` is
    /// this stream's again. (The docker tier's: its answer channel is stdout.)
    #[cfg_attr(not(feature = "docker"), allow(dead_code))]
    pub(crate) fn resume(&mut self, mark: &[u8], carry: &mut Vec<u8>) {
        self.done = false;
        let rest = std::mem::take(carry);
        self.push(&rest, mark, carry);
    }

    pub(crate) fn finish(mut self) -> OutputCapture {
        let pending = std::mem::take(&mut self.pending);
        self.capture.push(&pending);
        self.capture
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What the start of a session's answer channel holds: the driver's frames
/// are `<nonce> <length>\n<envelope>` (the call's answer) and `<nonce>
/// call <seq> <length>\n<request>` (a host-function call, answered with
/// [`reply_frame`]).
#[derive(Debug, PartialEq)]
pub(crate) enum Frame<'a> {
    /// Not all there yet.
    Partial,
    /// The call's answer (the envelope), and the bytes its frame took.
    Answer(&'a [u8], usize),
    /// A host-function call: its sequence number, its request, and the
    /// bytes its frame took.
    HostCall(u64, &'a [u8], usize),
    /// Not a frame of this call: the code wrote on the channel itself, or
    /// it overflowed.
    Bad,
}

/// The first frame of `channel` for the call whose frames start with
/// `header` (`"<nonce> "`); `overflow`: more came than the channel keeps.
pub(crate) fn first_frame<'a>(channel: &'a [u8], header: &str, overflow: bool) -> Frame<'a> {
    let Some(newline) = channel.iter().position(|&b| b == b'\n') else {
        // A header is short: a long line without one is not a frame.
        return if overflow || channel.len() > 64 {
            Frame::Bad
        } else {
            Frame::Partial
        };
    };
    let Some(fields) = std::str::from_utf8(&channel[..newline])
        .ok()
        .and_then(|line| line.strip_prefix(header))
    else {
        return Frame::Bad;
    };
    let (seq, length) = match fields.split_once(' ') {
        None => (None, fields),
        Some(("call", rest)) => match rest.split_once(' ') {
            Some((seq, length)) => match seq.parse::<u64>() {
                Ok(seq) => (Some(seq), length),
                Err(_) => return Frame::Bad,
            },
            None => return Frame::Bad,
        },
        Some(_) => return Frame::Bad,
    };
    let Some(end) = length
        .parse::<usize>()
        .ok()
        .and_then(|length| (newline + 1).checked_add(length))
    else {
        return Frame::Bad;
    };
    let Some(body) = channel.get(newline + 1..end) else {
        return if overflow { Frame::Bad } else { Frame::Partial };
    };
    match seq {
        None => Frame::Answer(body, end),
        Some(seq) => Frame::HostCall(seq, body, end),
    }
}

/// The frame that answers host call `seq` of the call with `header`.
pub(crate) fn reply_frame(header: &str, seq: u64, reply: &[u8]) -> Vec<u8> {
    let mut frame = format!("{header}reply {seq} {}\n", reply.len()).into_bytes();
    frame.extend_from_slice(reply);
    frame
}

/// The most a session's answer channel keeps before a frame is whole: the
/// largest envelope or host call, and a header.
pub(crate) fn channel_cap(config: &SandboxConfig, host: &HostCalls) -> usize {
    super::outcome::envelope_cap(config)
        .max(host.max_request_bytes())
        .saturating_add(64)
}

/// One call of a session in the driver's session mode: the frame to send,
/// how the answer's header and the end of its output are recognised, and
/// its output streams (given what came after the last call's end).
pub(crate) struct CallFrames {
    pub frame: Vec<u8>,
    pub mark: Vec<u8>,
    pub header: String,
    pub streams: [CallStream; 2],
}

impl CallFrames {
    pub(crate) fn new(
        request: &[u8],
        config: &SandboxConfig,
        host: &HostCalls,
        carry: &mut [Vec<u8>; 2],
    ) -> CallFrames {
        let nonce = nonce();
        let mut frame = format!("{nonce} {}\n", request.len()).into_bytes();
        frame.extend_from_slice(request);
        let mark = format!("\x1elattice-{nonce}\x1e").into_bytes();
        // After the end mark: the next call's output, or (docker) the answer.
        let carry_cap = config
            .max_output_bytes
            .saturating_add(channel_cap(config, host));
        let mut streams = [
            CallStream::new(config.max_output_bytes, carry_cap),
            CallStream::new(config.max_output_bytes, carry_cap),
        ];
        // What came after the last call's end is this call's.
        for (stream, carry) in streams.iter_mut().zip(carry.iter_mut()) {
            let carried = std::mem::take(carry);
            stream.push(&carried, &mark, carry);
        }
        CallFrames {
            frame,
            mark,
            header: format!("{nonce} "),
            streams,
        }
    }
}

/// The limit a session's call has reached, if any: its cancel, its wall
/// time (`elapsed`) or the CPU time it used.
pub(crate) fn limit_reached(
    cancel: &CancelToken,
    elapsed: std::time::Duration,
    cpu_used: std::time::Duration,
    config: &SandboxConfig,
) -> Option<super::outcome::Ending> {
    use super::outcome::Ending;
    if cancel.is_cancelled() {
        Some(Ending::Cancelled)
    } else if elapsed >= config.timeout {
        Some(Ending::TimedOut)
    } else if cpu_used >= config.max_cpu_time {
        Some(Ending::CpuLimit)
    } else {
        None
    }
}

/// A random nonce (hex) for one call.
fn nonce() -> String {
    let mut bytes = [0u8; 12];
    // SAFETY: getrandom fills the buffer we own.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Not secret, only unguessable by earlier code: time will do.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            ^ u128::from(std::process::id());
        bytes.copy_from_slice(&t.to_le_bytes()[..12]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_told_apart_and_checked() {
        let header = "ab12 ";
        assert_eq!(
            first_frame(b"ab12 4\n{}{}rest", header, false),
            Frame::Answer(b"{}{}", 11)
        );
        assert_eq!(
            first_frame(b"ab12 call 7 2\n{}ab12 3\n", header, false),
            Frame::HostCall(7, b"{}", 16)
        );
        assert_eq!(first_frame(b"ab12 10\n{}", header, false), Frame::Partial);
        assert_eq!(first_frame(b"ab12 10\n{}", header, true), Frame::Bad);
        assert_eq!(first_frame(b"ab12", header, false), Frame::Partial);
        for bad in [
            &b"ffff 2\n{}"[..],
            b"ab12 reply 1 2\n{}",
            b"ab12 call x 2\n{}",
            b"ab12 call 2\n{}",
            b"ab12 -1\n{}",
            b"ab12 99999999999999999999999\n",
            &[b'x'; 65],
        ] {
            assert_eq!(first_frame(bad, header, false), Frame::Bad, "{bad:?}");
        }
        assert_eq!(
            reply_frame(header, 3, b"{}"),
            b"ab12 reply 3 2\n{}".to_vec()
        );
    }
}
