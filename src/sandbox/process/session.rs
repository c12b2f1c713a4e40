//! A child that lives for a session: the CPython driver in `--session`
//! mode, started with everything a one-shot child gets (uid, namespaces,
//! cgroup, rlimits, filter, hook), then given one request after another.
//!
//! A call writes a frame `<nonce> <length>\n<request>` to the child's stdin
//! and reads until the answer frame with that nonce has come on fd 3 and
//! the call's output has ended on stdout and stderr (the driver writes
//! `\x1elattice-<nonce>\x1e` to each). Nonces are random per call, so
//! nothing the code wrote earlier can pass for a later call's answer.
//! Before its answer, the driver may send host-function calls on fd 3
//! (`<nonce> call <seq> <length>\n<request>`); each is served and answered
//! on stdin (`<nonce> reply <seq> <length>\n<reply>`). A
//! time limit, the CPU-time limit (the cgroup's, else the process's) or a
//! cancel sends SIGINT (`KeyboardInterrupt` in the code); a call that does
//! not answer within [`INTERRUPT_GRACE`] of it, or a child that dies, ends
//! the session: the group is killed, reaped and swept, the cgroup removed.

use super::*;
use crate::sandbox::host_calls::HostCalls;
use crate::sandbox::outcome::{python_outcome, Ended, Ending};
use crate::sandbox::session::{
    channel_cap, first_frame, limit_reached, reply_frame, CallFrames, Frame, SessionRun,
    SessionState,
};
use crate::sandbox::{SandboxConfig, SandboxOutput};

/// How long stopped code has to unwind before the session is ended.
const INTERRUPT_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the end of a call's output once it answered (the
/// code may have closed its stdout).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

pub(crate) struct SessionProcess {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    channel: Option<OwnedFd>,
    uid: Option<u32>,
    cgroup: Option<TaskCgroup>,
    /// Output that came after the end of a call (from a thread the code
    /// left running): the start of the next call's.
    carry: [Vec<u8>; 2],
    /// The CPU time used when the last call ended.
    cpu_after_last_call: Duration,
    ended: bool,
}

/// Runs `work` on the process's one session-parent thread, which never
/// exits: a child started there lives until it is ended, whichever thread
/// uses it (its parent-death signal, set so that no child outlives a
/// crashed host, fires when the *thread* that made it exits).
pub(crate) fn on_parent_thread<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, TaskError> {
    type Job = Box<dyn FnOnce() + Send>;
    static PARENT: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<Job>>>> =
        std::sync::OnceLock::new();
    let parent = PARENT.get_or_init(|| {
        let (sender, jobs) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("lattice-session-parent".into())
            .spawn(move || {
                for job in jobs {
                    // A panic is the job's caller's (it sees the reply dropped).
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .ok()
            .map(|_| std::sync::Mutex::new(sender))
    });
    let Some(parent) = parent else {
        return Err(TaskError::unavailable(
            "can't start the thread that starts session processes",
        ));
    };
    let (reply, answer) = std::sync::mpsc::channel();
    parent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Box::new(move || {
            let _ = reply.send(work());
        }))
        .map_err(|_| TaskError::internal("the session-parent thread is gone"))?;
    answer
        .recv()
        .map_err(|_| TaskError::internal("the session-parent thread failed"))
}

impl SessionProcess {
    /// Starts the driver of `spec` (its args must ask for `--session`).
    pub(crate) fn start(mut spec: ChildSpec<'_>) -> Result<SessionProcess, TaskError> {
        spec.result_channel = true;
        let spawned = launch(&mut spec)?;
        let session = SessionProcess {
            pid: spawned.pid,
            pidfd: pidfd_open(spawned.pid),
            stdin: Some(spawned.stdin),
            stdout: Some(spawned.stdout),
            stderr: Some(spawned.stderr),
            channel: spawned.channel,
            uid: spec.uid,
            cgroup: spec.cgroup.take(),
            carry: [Vec::new(), Vec::new()],
            cpu_after_last_call: Duration::ZERO,
            ended: false,
        };
        for fd in [
            &session.stdin,
            &session.stdout,
            &session.stderr,
            &session.channel,
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(fd.as_raw_fd());
        }
        Ok(session)
    }

    /// Stops (or resumes) every process of the session between calls,
    /// where it has a cgroup: nothing it left running uses the machine
    /// while no call is running.
    fn freeze(&self, frozen: bool) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.freeze(frozen);
        }
    }

    /// CPU time the session's processes used so far.
    fn cpu_time(&self) -> Duration {
        if let Some(used) = self.cgroup.as_ref().and_then(TaskCgroup::cpu_time) {
            return used;
        }
        // utime and stime (fields 14, 15) of the leader, in clock ticks.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_micros(ticks * 1_000_000 / hz)
    }

    /// Runs one request: its output, and the state it left the session in.
    pub(crate) fn call(
        &mut self,
        request: &[u8],
        config: &SandboxConfig,
        cancel: &CancelToken,
        mut host: HostCalls,
    ) -> SessionRun {
        if self.ended {
            return SessionRun {
                output: SandboxOutput::error(TaskError::internal("the session's process is gone")),
                state: SessionState::Closed,
            };
        }
        let CallFrames {
            frame: mut outgoing,
            mark,
            header,
            mut streams,
        } = CallFrames::new(request, config, &host, &mut self.carry);
        let cap = channel_cap(config, &host);
        let mut answer: Vec<u8> = Vec::new();
        let mut answered: Option<Instant> = None;
        let mut overflow = false;
        let started = Instant::now();
        // What the session's processes used since the last call ended (a
        // thread or a child it left running; frozen, where there is a
        // cgroup) counts against this call.
        let cpu_start = self.cpu_after_last_call;
        self.freeze(false);
        let mut stopped: Option<(Instant, Ending)> = None;
        let mut written = 0;
        let mut died = false;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let now = Instant::now();
            let outputs_done = streams
                .iter()
                .zip([&self.stdout, &self.stderr])
                .all(|(s, fd)| s.done || fd.is_none());
            if let Some(at) = answered {
                if outputs_done || now >= at + OUTPUT_GRACE {
                    break;
                }
            }
            if answered.is_none() {
                match stopped {
                    None => {
                        let cpu_used = self.cpu_time().saturating_sub(cpu_start);
                        let limit = limit_reached(cancel, now - started, cpu_used, config);
                        if let Some(limit) = limit {
                            // SAFETY: our child, not yet reaped.
                            unsafe { libc::kill(self.pid, libc::SIGINT) };
                            stopped = Some((now, limit));
                        }
                    }
                    Some((at, _)) if now >= at + INTERRUPT_GRACE => break,
                    Some(_) => {}
                }
            }
            if died {
                break;
            }
            let mut polled = PollSet::new();
            if written < outgoing.len() {
                polled.add(&self.stdin, libc::POLLOUT, 0);
            }
            polled.add(&self.stdout, libc::POLLIN, 1);
            polled.add(&self.stderr, libc::POLLIN, 2);
            polled.add(&self.channel, libc::POLLIN, 3);
            polled.add(&self.pidfd, libc::POLLIN, 4);
            let Ok(ready) = polled.wait(POLL_SLICE) else {
                died = true;
                continue;
            };
            for slot in ready {
                match slot {
                    0 => {
                        let fd = self.stdin.as_ref().map_or(-1, |f| f.as_raw_fd());
                        match write_some(fd, &outgoing[written..]) {
                            Ok(n) => {
                                written += n;
                                if written == outgoing.len() {
                                    outgoing.clear();
                                    written = 0;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => {
                                self.stdin = None;
                                died = true;
                            }
                        }
                    }
                    1 | 2 => {
                        let index = usize::from(slot - 1);
                        let fd = if index == 0 {
                            &mut self.stdout
                        } else {
                            &mut self.stderr
                        };
                        let (stream, carry) = (&mut streams[index], &mut self.carry[index]);
                        read_once(fd, &mut buffer, |b| stream.push(b, &mark, carry));
                    }
                    3 => {
                        read_once(&mut self.channel, &mut buffer, |b| {
                            let room = cap.saturating_sub(answer.len());
                            overflow |= b.len() > room;
                            answer.extend_from_slice(&b[..room.min(b.len())]);
                        });
                        if self.channel.is_none() {
                            died = true;
                        }
                    }
                    _ => died = true,
                }
            }
            // Host calls are served as they come; the answer ends the call.
            while answered.is_none() {
                match first_frame(&answer, &header, overflow) {
                    Frame::Partial => break,
                    Frame::HostCall(seq, request, taken) => {
                        let reply = host.dispatch(request);
                        outgoing.extend_from_slice(&reply_frame(&header, seq, &reply));
                        answer.drain(..taken);
                    }
                    Frame::Answer(..) | Frame::Bad => answered = Some(Instant::now()),
                }
            }
        }
        let [stdout, stderr] = streams;
        let (stdout, stderr) = (stdout.finish(), stderr.finish());
        match answered {
            Some(_) => {
                // Anything after the frame was not written by the driver.
                let envelope = match first_frame(&answer, &header, overflow) {
                    Frame::Answer(envelope, taken) if taken == answer.len() => Some(envelope),
                    _ => None,
                };
                let run = Ended {
                    ending: stopped.map_or(Ending::Exited(0), |(_, limit)| limit),
                    stdout,
                    stderr,
                    channel: envelope.map(<[u8]>::to_vec).unwrap_or_default(),
                    channel_overflow: overflow,
                    cpu_time: self.cpu_time().saturating_sub(cpu_start),
                    oom_killed: false,
                };
                let output = match envelope {
                    Some(_) => python_outcome(run, config),
                    None if overflow => {
                        // The rest of the answer is still in the pipe: the
                        // session can't be read in step again.
                        self.end();
                        return SessionRun {
                            output: python_outcome(run, config),
                            state: SessionState::Closed,
                        };
                    }
                    None => {
                        // The code wrote on the answer channel itself.
                        self.end();
                        return SessionRun {
                            output: SandboxOutput {
                                result: Err(super::super::outcome::protocol_error(
                                    "the session's answer channel carried something that is not an answer (did the code write to fd 3?)",
                                )),
                                stdout: run.stdout.finish(),
                                stderr: run.stderr.finish(),
                            },
                            state: SessionState::Closed,
                        };
                    }
                };
                self.cpu_after_last_call = self.cpu_time();
                self.freeze(true);
                SessionRun {
                    state: crate::sandbox::session::state_after(&output),
                    output,
                }
            }
            None => {
                // It died, or did not unwind from a stop: the session ends.
                let cpu = self.cpu_time().saturating_sub(cpu_start);
                let (status, _, oom_killed) = self.end();
                let run = Ended {
                    ending: stopped.map_or(status, |(_, limit)| limit),
                    stdout,
                    stderr,
                    channel: Vec::new(),
                    channel_overflow: false,
                    cpu_time: cpu,
                    oom_killed,
                };
                SessionRun {
                    output: python_outcome(run, config),
                    state: SessionState::Closed,
                }
            }
        }
    }

    /// Ends the child: killed, reaped, swept, its cgroup removed.
    fn end(&mut self) -> (Ending, Duration, bool) {
        if self.ended {
            return (Ending::Exited(0), Duration::ZERO, false);
        }
        self.ended = true;
        self.stdin = None;
        self.freeze(false);
        let ended = end_child(self.pid, self.uid, self.cgroup.take());
        self.stdout = None;
        self.stderr = None;
        self.channel = None;
        self.pidfd = None;
        ended
    }
}

/// One read of at most `buffer`'s size from `fd` into `sink` (a flood can't
/// keep the caller from its limits); closes `fd` at its end.
fn read_once(fd: &mut Option<OwnedFd>, buffer: &mut [u8], mut sink: impl FnMut(&[u8])) {
    let Some(raw) = fd.as_ref().map(|f| f.as_raw_fd()) else {
        return;
    };
    // SAFETY: reading into a buffer we own, of its length.
    let n = unsafe { libc::read(raw, buffer.as_mut_ptr().cast(), buffer.len()) };
    if n > 0 {
        sink(&buffer[..n as usize]);
    } else if n == 0
        || !matches!(
            io::Error::last_os_error().kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
    {
        *fd = None;
    }
}

impl Drop for SessionProcess {
    fn drop(&mut self) {
        self.end();
    }
}
