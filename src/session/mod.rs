//! Sessions: Python state kept across calls, REPL-style.
//!
//! A [`Session`] keeps one interpreter for its life — an instance of the
//! Wasm guest on the wasm tier, a Python thread on the none tier, a
//! CPython process on the subprocess and seccomp tiers, a container on the
//! docker tier — under
//! the limits of a [`SandboxConfig`]: `timeout` and `max_cpu_time` per
//! call, `max_memory_mb` over the session's life, output and result caps
//! per call. [`Session::exec`] runs code in the session's namespace (the
//! value of a final expression is the result); [`Session::call`] calls a
//! function defined earlier. Errors are the task error kinds; a limit that
//! fires says what it left of the session ([`SessionState`]). Closing (or
//! dropping) a session frees everything it holds. On the wasm tier a
//! session can be saved as bytes ([`Session::snapshot`]), reopened from
//! them in another process ([`Session::restore`]) and copied
//! ([`Session::fork`]). Code in a session can call functions of this
//! process registered with [`SessionBuilder::host_functions`] (see
//! [`HostFunctions`]).
//!
//! ```no_run
//! use lattice::sandbox::SandboxConfig;
//! use lattice::session::{Session, Call};
//! use serde_json::json;
//!
//! let session = Session::open(SandboxConfig::default())?;
//! session.exec("def area(w, h):\n    return w * h\nunit = 'm2'").result?;
//! let reply = session.exec("f'{area(3, 4)} {unit}'");
//! assert_eq!(reply.result?, json!("12 m2"));
//! assert_eq!(reply.repr.as_deref(), Some("'12 m2'"));
//! let reply = session.call("area", Call::args(vec![json!(2), json!(5)]));
//! assert_eq!(reply.result?, json!(10));
//! session.close();
//! # Ok::<(), lattice::task::TaskError>(())
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::sandbox::host_calls::{HostCalls, ServingThread};
use crate::sandbox::session::{self as tier_session, TierSession};
use crate::sandbox::{CancelToken, SandboxConfig, SandboxLevel};
use crate::task::TaskError;

pub use crate::sandbox::SessionState;
pub use crate::task::{HostCall, HostError, HostFunctions, HostLimits};

/// How long a session may sit unused before it is closed, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How many sessions a process may have open at once, by default.
pub const DEFAULT_MAX_SESSIONS: usize = 64;

static MAX_SESSIONS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_SESSIONS);

/// Sets how many sessions this process may have open at once; opening one
/// more fails with `sandbox_unavailable` until one closes.
pub fn set_max_sessions(max: usize) {
    MAX_SESSIONS.store(max, Ordering::Relaxed);
}

/// How many sessions this process may have open at once.
pub fn max_sessions() -> usize {
    MAX_SESSIONS.load(Ordering::Relaxed)
}

/// How many sessions this process has open now.
pub fn open_sessions() -> usize {
    lock(&OPEN).iter().filter(|s| live(s)).count()
}

/// True for a session that is open (or being opened).
fn live(session: &Weak<Shared>) -> bool {
    session
        .upgrade()
        .is_some_and(|s| !s.closed.load(Ordering::Relaxed))
}

/// What a call of a session's function is given: `input` as its one
/// argument, or `args`/`kwargs`, or nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Call {
    input: Option<Value>,
    args: Option<Vec<Value>>,
    kwargs: Option<Map<String, Value>>,
}

impl Call {
    /// A call with no arguments.
    pub fn none() -> Call {
        Call::default()
    }

    /// A call with `input` as the one argument.
    pub fn input(input: Value) -> Call {
        Call {
            input: Some(input),
            ..Call::default()
        }
    }

    /// A call with positional arguments.
    pub fn args(args: Vec<Value>) -> Call {
        Call {
            args: Some(args),
            ..Call::default()
        }
    }

    /// This call with keyword arguments too.
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Call {
        self.kwargs = Some(kwargs);
        self
    }

    /// Adds the call's `input`, `args` and `kwargs` to a request.
    pub(crate) fn add_to(self, request: &mut Map<String, Value>) {
        if let Some(input) = self.input {
            request.insert("input".into(), input);
        }
        if let Some(args) = self.args {
            request.insert("args".into(), Value::Array(args));
        }
        if let Some(kwargs) = self.kwargs {
            request.insert("kwargs".into(), Value::Object(kwargs));
        }
    }

    /// The call a request's `input`, `args` and `kwargs` describe (the
    /// inverse of [`Call::add_to`]).
    #[cfg_attr(not(feature = "ray"), allow(dead_code))] // the Ray worker's
    pub(crate) fn from_request(request: &Map<String, Value>) -> Call {
        Call {
            input: request.get("input").cloned(),
            args: request.get("args").and_then(Value::as_array).cloned(),
            kwargs: request.get("kwargs").and_then(Value::as_object).cloned(),
        }
    }
}

/// What one call of a session gave back.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Reply {
    /// [`Session::exec`]: the value of a final expression statement as
    /// JSON (`null` when there is none, or it has no JSON form);
    /// [`Session::call`]: the function's return value. Or the error.
    pub result: Result<Value, TaskError>,
    /// [`Session::exec`]: the `repr` of the final expression's value, if
    /// the code ended with an expression and ran to its end.
    pub repr: Option<String>,
    /// What the call printed.
    pub stdout: String,
    /// What the call wrote to stderr.
    pub stderr: String,
    /// What the call left of the session.
    pub state: SessionState,
    /// How long the call took.
    pub duration: Duration,
}

impl Reply {
    /// A reply with `error` and no output.
    pub(crate) fn error(error: TaskError, state: SessionState, started: Instant) -> Reply {
        Reply {
            result: Err(error),
            repr: None,
            stdout: String::new(),
            stderr: String::new(),
            state,
            duration: started.elapsed(),
        }
    }

    /// The reply as one JSON object: `{"status": "ok", "value", "repr"}` or
    /// `{"status": "error", "error": {"kind", "type", "message",
    /// "traceback"}}`, with `stdout`, `stderr`, `session` (its
    /// [`SessionState`]) and `duration_ms`.
    pub fn to_json(&self) -> Value {
        let mut object = match &self.result {
            Ok(value) => json!({"status": "ok", "value": value, "repr": self.repr}),
            Err(error) => json!({"status": "error", "error": error.to_record()}),
        };
        let fields = object.as_object_mut().expect("an object");
        fields.insert("stdout".into(), Value::String(self.stdout.clone()));
        fields.insert("stderr".into(), Value::String(self.stderr.clone()));
        fields.insert("session".into(), Value::String(self.state.as_str().into()));
        fields.insert(
            "duration_ms".into(),
            json!((self.duration.as_secs_f64() * 1e6).round() / 1e3),
        );
        object
    }

    /// A reply with `value` and no output.
    #[cfg_attr(not(feature = "ray"), allow(dead_code))] // the Ray worker's
    pub(crate) fn ok(value: Value, state: SessionState, started: Instant) -> Reply {
        Reply {
            result: Ok(value),
            repr: None,
            stdout: String::new(),
            stderr: String::new(),
            state,
            duration: started.elapsed(),
        }
    }

    /// The reply [`Reply::to_json`] wrote (a Ray session's, from its node).
    #[cfg_attr(not(feature = "ray"), allow(dead_code))]
    pub(crate) fn from_json(object: &Value) -> Result<Reply, TaskError> {
        let malformed = || TaskError::internal(format!("a malformed session reply: {object}"));
        let text = |key: &str| object[key].as_str().unwrap_or_default().to_string();
        let result = match object["status"].as_str() {
            Some("ok") => Ok(object.get("value").cloned().unwrap_or(Value::Null)),
            Some("error") => Err(TaskError::from_record(
                serde_json::from_value(object["error"].clone()).map_err(|_| malformed())?,
            )),
            _ => return Err(malformed()),
        };
        Ok(Reply {
            result,
            repr: object["repr"].as_str().map(str::to_string),
            stdout: text("stdout"),
            stderr: text("stderr"),
            state: serde_json::from_value(object["session"].clone()).map_err(|_| malformed())?,
            duration: Duration::from_secs_f64(
                object["duration_ms"].as_f64().unwrap_or(0.0).max(0.0) / 1e3,
            ),
        })
    }
}

/// A Python session on one tier. Calls from several threads take turns.
pub struct Session {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// The cancel token of the call running now, for `close` to stop it.
    in_flight: Mutex<Option<CancelToken>>,
    /// Set when the session is closed, so that it no longer counts as open.
    closed: std::sync::atomic::AtomicBool,
    config: SandboxConfig,
    idle_timeout: Duration,
    host_functions: Option<HostFunctions>,
    /// Their names, as every request carries them (made once).
    host_names: Option<Value>,
    /// The thread running one of its host functions now, if any.
    serving: ServingThread,
}

struct Inner {
    tier: Option<Box<dyn TierSession>>,
    last_used: Instant,
}

/// Every session of the process (for the cap and the idle sweep).
static OPEN: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// How to open a [`Session`]: its configuration, idle timeout and host
/// functions; then [`SessionBuilder::open`] or [`SessionBuilder::restore`].
#[derive(Clone, Debug)]
pub struct SessionBuilder {
    config: SandboxConfig,
    idle_timeout: Duration,
    host_functions: Option<HostFunctions>,
}

impl SessionBuilder {
    /// Closes the session after `idle_timeout` without a call (default:
    /// [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> SessionBuilder {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Lets the session's code call these functions of this process (see
    /// [`HostFunctions`]), by their names.
    pub fn host_functions(mut self, functions: HostFunctions) -> SessionBuilder {
        self.host_functions = Some(functions);
        self
    }

    /// Opens the session on the tier its configuration names.
    pub fn open(self) -> Result<Session, TaskError> {
        self.start(|config| tier_session::open(config, None))
    }

    /// Opens the session from a [`Session::snapshot`] (made by this build,
    /// in this process or another); the configuration names the wasm tier.
    /// Bytes from another build, or corrupted, are an `invalid_task`
    /// error; a memory bigger than `max_memory_mb` allows, `memory_limit`.
    pub fn restore(self, snapshot: &[u8]) -> Result<Session, TaskError> {
        self.start(|config| tier_session::open(config, Some(snapshot)))
    }

    /// Opens a session with `make`, counted against the open-session cap.
    fn start(
        self,
        make: impl FnOnce(&SandboxConfig) -> Result<(Box<dyn TierSession>, SandboxConfig), TaskError>,
    ) -> Result<Session, TaskError> {
        if let Some(functions) = &self.host_functions {
            functions.check()?;
        }
        let shared = |tier, config| Shared {
            inner: Mutex::new(Inner {
                tier,
                last_used: Instant::now(),
            }),
            in_flight: Mutex::new(None),
            closed: Default::default(),
            config,
            idle_timeout: self.idle_timeout,
            host_functions: self.host_functions.clone(),
            host_names: HostCalls::names(self.host_functions.as_ref()),
            serving: ServingThread::default(),
        };
        // Counted before the (slow) open, so concurrent opens can't pass the cap.
        let placeholder = Arc::new(shared(None, self.config.clone()));
        {
            let mut open = lock(&OPEN);
            open.retain(live);
            if open.len() >= max_sessions() {
                return Err(TaskError::unavailable(format!(
                    "{} sessions are open, the most this process allows: close one first",
                    open.len()
                )));
            }
            open.push(Arc::downgrade(&placeholder));
        }
        let (tier, config) = make(&self.config)?;
        let shared = Arc::new(shared(Some(tier), config));
        {
            let mut open = lock(&OPEN);
            open.retain(|s| live(s) && !std::ptr::eq(s.as_ptr(), &*placeholder));
            open.push(Arc::downgrade(&shared));
        }
        start_idle_sweep();
        Ok(Session { shared })
    }
}

impl Session {
    /// How to open a session under `config`, with more than the defaults.
    pub fn builder(config: SandboxConfig) -> SessionBuilder {
        SessionBuilder {
            config,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            host_functions: None,
        }
    }

    /// Opens a session on the tier `config` names, with the default idle timeout.
    pub fn open(config: SandboxConfig) -> Result<Session, TaskError> {
        Session::builder(config).open()
    }

    /// Opens a session that closes itself after `idle_timeout` without a call.
    pub fn open_with_idle_timeout(
        config: SandboxConfig,
        idle_timeout: Duration,
    ) -> Result<Session, TaskError> {
        Session::builder(config).idle_timeout(idle_timeout).open()
    }

    /// Opens a session from a [`Session::snapshot`] (see
    /// [`SessionBuilder::restore`]).
    pub fn restore(config: SandboxConfig, snapshot: &[u8]) -> Result<Session, TaskError> {
        Session::builder(config).restore(snapshot)
    }

    /// [`Session::restore`] with an idle timeout.
    pub fn restore_with_idle_timeout(
        config: SandboxConfig,
        snapshot: &[u8],
        idle_timeout: Duration,
    ) -> Result<Session, TaskError> {
        Session::builder(config)
            .idle_timeout(idle_timeout)
            .restore(snapshot)
    }

    /// The session's state as bytes (wasm tier): the pages of its memory
    /// that differ from the guest's base image, compressed, with the
    /// identity of the build that made them; nothing of the host's (open
    /// files are not kept). Give them to [`Session::restore`].
    pub fn snapshot(&self) -> Result<Vec<u8>, TaskError> {
        self.refuse_without_snapshots()?;
        if self.reentered() {
            return Err(reentry());
        }
        let mut inner = lock(&self.shared.inner);
        let tier = inner.tier.as_mut().ok_or_else(closed)?;
        tier.snapshot()
    }

    /// An independent copy of the session (wasm tier), with the same
    /// configuration and idle timeout: calls on one do not change the other.
    pub fn fork(&self) -> Result<Session, TaskError> {
        self.refuse_without_snapshots()?;
        if self.reentered() {
            return Err(reentry());
        }
        let shared = &self.shared;
        let builder = SessionBuilder {
            config: shared.config.clone(),
            idle_timeout: shared.idle_timeout,
            host_functions: shared.host_functions.clone(),
        };
        builder.start(|config| {
            let mut inner = lock(&shared.inner);
            let tier = inner.tier.as_mut().ok_or_else(closed)?;
            Ok((tier.fork(config)?, config.clone()))
        })
    }

    fn refuse_without_snapshots(&self) -> Result<(), TaskError> {
        match self.tier() {
            SandboxLevel::Wasm => Ok(()),
            level => Err(tier_session::no_snapshots(level)),
        }
    }

    /// The tier the session runs on.
    pub fn tier(&self) -> SandboxLevel {
        self.shared.config.tier
    }

    /// The configuration the session runs under.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// True until the session is closed (by [`Session::close`], its idle
    /// timeout, or a call its interpreter could not survive).
    pub fn is_open(&self) -> bool {
        if self.shared.closed.load(Ordering::Relaxed) {
            return false;
        }
        // A call in flight holds the session (and may be asking from one of
        // its host functions): the session is open while it runs.
        match self.shared.inner.try_lock() {
            Ok(inner) => inner.tier.is_some(),
            Err(std::sync::TryLockError::Poisoned(inner)) => inner.into_inner().tier.is_some(),
            Err(std::sync::TryLockError::WouldBlock) => true,
        }
    }

    /// Runs `code` in the session's namespace, as a REPL does: if its last
    /// statement is an expression, its value is the result (and its `repr`
    /// is in [`Reply::repr`]).
    pub fn exec(&self, code: &str) -> Reply {
        self.exec_cancellable(code, &CancelToken::new())
    }

    /// [`Session::exec`], stoppable from another thread through `cancel`
    /// (the session is then interrupted, as by a limit).
    pub fn exec_cancellable(&self, code: &str, cancel: &CancelToken) -> Reply {
        let mut request = self.request("exec");
        request.insert("code".into(), Value::String(code.to_string()));
        let mut reply = self.run(request, cancel);
        if let Ok(value) = &mut reply.result {
            match value {
                Value::Object(fields) => {
                    reply.repr = fields
                        .get("repr")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    *value = fields.remove("value").unwrap_or(Value::Null);
                }
                _ => {
                    reply.result = Err(TaskError::internal(
                        "the session's driver answered an exec without a value",
                    ))
                }
            }
        }
        reply
    }

    /// Calls the function `entry` the session defined.
    pub fn call(&self, entry: &str, call: Call) -> Reply {
        self.call_cancellable(entry, call, &CancelToken::new())
    }

    /// [`Session::call`], stoppable from another thread through `cancel`.
    pub fn call_cancellable(&self, entry: &str, call: Call, cancel: &CancelToken) -> Reply {
        let mut request = self.request("call");
        request.insert("entry".into(), Value::String(entry.to_string()));
        call.add_to(&mut request);
        self.run(request, cancel)
    }

    /// Cuts `code` into its top-level statements (a decorated definition
    /// with its decorators), as a REPL reads a script: each can then be
    /// given to [`Session::exec`] on its own. Code that does not parse
    /// comes back as the statements before the error and then the rest in
    /// one piece, whose exec reports the syntax error.
    pub fn statements(&self, code: &str) -> Result<Vec<String>, TaskError> {
        let mut request = self.request("split");
        request.insert("code".into(), Value::String(code.to_string()));
        let value = self.run(request, &CancelToken::new()).result?;
        serde_json::from_value(value)
            .map_err(|e| TaskError::internal(format!("the driver split the code badly: {e}")))
    }

    /// Closes the session: a call in flight is cancelled, and its
    /// interpreter, process or container is gone when this returns. Later
    /// calls fail; closing again does nothing.
    pub fn close(&self) {
        // A call in flight is stopped first (it holds the session).
        if let Some(cancel) = lock(&self.shared.in_flight).take() {
            cancel.cancel();
        }
        self.shared.closed.store(true, Ordering::Relaxed);
        if self.reentered() {
            // From one of its host functions: the call it serves ends
            // (cancelled) and frees the session then.
            return;
        }
        let tier = lock(&self.shared.inner).tier.take();
        drop(tier);
        self.shared.closed.store(true, Ordering::Relaxed);
    }

    fn request(&self, op: &str) -> Map<String, Value> {
        let mut request = Map::new();
        request.insert("op".into(), Value::String(op.into()));
        if let Some(allowed) = &self.shared.config.allowed_imports {
            request.insert("allowed_imports".into(), json!(allowed));
        }
        if let Some(names) = &self.shared.host_names {
            request.insert("functions".into(), names.clone());
        }
        request
    }

    fn run(&self, request: Map<String, Value>, cancel: &CancelToken) -> Reply {
        let started = Instant::now();
        let request = match serde_json::to_string(&request) {
            Ok(request) => request,
            Err(e) => {
                return Reply::error(
                    TaskError::invalid(format!("the call's input can't be encoded: {e}")),
                    self.state(),
                    started,
                )
            }
        };
        if self.reentered() {
            return Reply::error(reentry(), SessionState::Ready, started);
        }
        let mut inner = lock(&self.shared.inner);
        let Some(tier) = inner.tier.as_mut() else {
            return Reply::error(closed(), SessionState::Closed, started);
        };
        *lock(&self.shared.in_flight) = Some(cancel.clone());
        let host = HostCalls::new(
            self.shared.host_functions.as_ref(),
            &self.shared.config,
            cancel,
        )
        .serving(&self.shared.serving);
        let out_of_time = host.out_of_time();
        let mut run = tier.run(&request, &self.shared.config, cancel, host);
        if out_of_time.settle(&mut run.output.result, &self.shared.config)
            && run.state == SessionState::Ready
        {
            // The host call's exception stopped the code, as the limit does.
            run.state = SessionState::Interrupted;
        }
        *lock(&self.shared.in_flight) = None;
        inner.last_used = Instant::now();
        let mut state = run.state;
        if state == SessionState::Closed || self.shared.closed.load(Ordering::Relaxed) {
            // (closed meanwhile by its owner, or by one of its host functions)
            inner.tier = None;
            self.shared.closed.store(true, Ordering::Relaxed);
            state = SessionState::Closed;
        }
        let mut result = run.output.result;
        if cancel.is_cancelled() && result.is_err() {
            result = Err(TaskError::Cancelled);
        }
        Reply {
            result,
            repr: None,
            stdout: run.output.stdout,
            stderr: run.output.stderr,
            state,
            duration: started.elapsed(),
        }
    }

    /// True on the thread running one of this session's host functions.
    fn reentered(&self) -> bool {
        *lock(&self.shared.serving) == Some(std::thread::current().id())
    }

    fn state(&self) -> SessionState {
        if self.is_open() {
            SessionState::Ready
        } else {
            SessionState::Closed
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("tier", &self.tier())
            .field("open", &self.is_open())
            .finish()
    }
}

/// The error of a host function's use of the session it serves.
fn reentry() -> TaskError {
    TaskError::invalid("a host function can't use the session it serves: the session waits for it")
}

/// The error of a call on a closed session.
fn closed() -> TaskError {
    TaskError::InvalidTask {
        type_name: "SessionClosed".into(),
        message: "the session is closed (closed by its owner, its idle timeout, or a call its interpreter could not survive): open a new one".into(),
    }
}

/// Closes sessions left idle past their timeout, every second.
fn start_idle_sweep() {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("lattice-session-sweep".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(250));
                let sessions: Vec<Arc<Shared>> =
                    lock(&OPEN).iter().filter_map(Weak::upgrade).collect();
                for shared in sessions {
                    // A session in a call is not idle.
                    let Ok(mut inner) = shared.inner.try_lock() else {
                        continue;
                    };
                    if inner.tier.is_some() && inner.last_used.elapsed() >= shared.idle_timeout {
                        let tier = inner.tier.take();
                        drop(inner);
                        drop(tier);
                        shared.closed.store(true, Ordering::Relaxed);
                    }
                }
            });
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
