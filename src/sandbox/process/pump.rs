//! Feeding the child its stdin and reading its stdout, stderr and result
//! channel without deadlock, until it ends, times out, runs out of CPU
//! time or is cancelled.

use super::*;

pub(super) struct PumpFds {
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    pub(super) channel: Option<OwnedFd>,
    pub(super) pidfd: Option<OwnedFd>,
}

/// Feeds stdin and drains the outputs until the child is gone and its pipes
/// are closed. Returns the ending if we ended it (timeout, cancel).
#[allow(clippy::too_many_arguments)]
pub(super) fn pump(
    mut fds: PumpFds,
    input: &[u8],
    channel_cap: usize,
    deadline: Instant,
    pid: libc::pid_t,
    uid: Option<u32>,
    cpu_watch: Option<(&TaskCgroup, Duration)>,
    cancel: &CancelToken,
    run: &mut Ended,
) -> Option<Ending> {
    for fd in [&fds.stdin, &fds.stdout, &fds.stderr, &fds.channel]
        .into_iter()
        .flatten()
    {
        set_nonblocking(fd.as_raw_fd());
    }
    let mut written = 0;
    if input.is_empty() {
        fds.stdin = None;
    }
    let mut ended: Option<Ending> = None;
    let mut leader_gone = false;
    let mut drain_until: Option<Instant> = None;
    let mut buffer = vec![0u8; 64 * 1024];

    loop {
        let now = Instant::now();
        if ended.is_none() {
            if cancel.is_cancelled() {
                ended = Some(Ending::Cancelled);
            } else if now >= deadline {
                ended = Some(Ending::TimedOut);
            } else if cpu_watch
                .is_some_and(|(cgroup, limit)| cgroup.cpu_time().is_some_and(|used| used >= limit))
            {
                ended = Some(Ending::CpuLimit);
            }
            if ended.is_some() {
                kill_group(pid);
                if let Some(uid) = uid {
                    sweep_uid(uid);
                }
                drain_until = Some(now + DRAIN_GRACE);
            }
        }
        if !leader_gone && fds.pidfd.is_none() && leader_exited(pid) {
            leader_gone = true;
            kill_group(pid);
            drain_until.get_or_insert(now + DRAIN_GRACE);
        }
        let outputs_open = fds.stdout.is_some() || fds.stderr.is_some() || fds.channel.is_some();
        if !outputs_open && leader_gone {
            break;
        }
        if drain_until.is_some_and(|until| now >= until) {
            break;
        }

        let mut polled = PollSet::new();
        polled.add(&fds.stdin, libc::POLLOUT, 0);
        polled.add(&fds.stdout, libc::POLLIN, 1);
        polled.add(&fds.stderr, libc::POLLIN, 2);
        polled.add(&fds.channel, libc::POLLIN, 3);
        if !leader_gone {
            polled.add(&fds.pidfd, libc::POLLIN, 4);
        }
        let limit = drain_until.unwrap_or(deadline);
        let wait = limit.saturating_duration_since(now).min(POLL_SLICE);
        let Ok(ready) = polled.wait(wait) else {
            break;
        };
        for slot in ready {
            match slot {
                0 => {
                    let fd = fds.stdin.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
                    match write_some(fd, &input[written..]) {
                        Ok(n) => {
                            written += n;
                            if written >= input.len() {
                                fds.stdin = None;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => fds.stdin = None,
                    }
                }
                1 => drain(&mut fds.stdout, &mut buffer, |b| run.stdout.push(b)),
                2 => drain(&mut fds.stderr, &mut buffer, |b| run.stderr.push(b)),
                3 => drain(&mut fds.channel, &mut buffer, |b| {
                    let room = channel_cap.saturating_sub(run.channel.len());
                    if b.len() > room {
                        run.channel_overflow = true;
                    }
                    run.channel.extend_from_slice(&b[..room.min(b.len())]);
                }),
                _ => {
                    // The leader exited: end the rest of its group now, then
                    // read what is left in the pipes.
                    leader_gone = true;
                    fds.stdin = None;
                    kill_group(pid);
                    if let Some(uid) = uid {
                        sweep_uid(uid);
                    }
                    drain_until.get_or_insert(Instant::now() + DRAIN_GRACE);
                }
            }
        }
    }
    ended
}

/// Without a pidfd (old kernels), notices the leader's exit by asking.
pub(super) fn leader_exited(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with WNOWAIT only inspects the child; it stays unreaped.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after waitid filled `info`.
    r == 0 && unsafe { info.si_pid() } == pid
}

pub(super) fn drain(fd: &mut Option<OwnedFd>, buffer: &mut [u8], mut sink: impl FnMut(&[u8])) {
    let Some(raw) = fd.as_ref().map(|f| f.as_raw_fd()) else {
        return;
    };
    loop {
        // SAFETY: reading into a buffer we own, of its length.
        let n = unsafe { libc::read(raw, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n > 0 {
            sink(&buffer[..n as usize]);
            continue;
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted => continue,
                _ => {}
            }
        }
        *fd = None;
        return;
    }
}

/// Writes part of `data` to a pipe. SIGPIPE is blocked around the write
/// (and a pending one consumed), so a child that closed its stdin gives
/// EPIPE instead of killing a host that does not ignore SIGPIPE.
pub(super) fn write_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let chunk = data.len().min(64 * 1024);
    // SAFETY: signal-mask calls on this thread only, and a write from a
    // slice we own.
    unsafe {
        let mut pipe_only: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe_only);
        libc::sigaddset(&mut pipe_only, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_only, &mut previous);
        let n = libc::write(fd, data.as_ptr().cast(), chunk);
        let error = io::Error::last_os_error();
        if n < 0 && error.raw_os_error() == Some(libc::EPIPE) {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&pipe_only, std::ptr::null_mut(), &zero);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        if n < 0 {
            Err(error)
        } else {
            Ok(n as usize)
        }
    }
}
