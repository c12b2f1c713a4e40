//! The host's side of host-function calls, the same for every tier: a
//! tier hands over what the driver sent (`{"name", "args", "kwargs"}` as
//! JSON) and sends back what [`HostCalls::dispatch`] returns
//! (`{"ok": value}` or `{"error": message, "type": exception name}`; the
//! driver raises that exception). Everything from the sandbox is checked
//! here, where the code can't reach: the name must be registered, and the
//! exec's calls and bytes stay within its [`HostLimits`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{CancelToken, SandboxConfig};
use crate::task::{HostCall, HostFunction, HostFunctions, HostLimits};

/// One exec's host calls: the functions it may call and what it has used.
pub(crate) struct HostCalls {
    functions: Option<HostFunctions>,
    limits: HostLimits,
    calls: u32,
    bytes_in: u64,
    bytes_out: u64,
    /// Set once a limit fired: every later call of the exec fails too.
    exhausted: Option<String>,
    deadline: Instant,
    cancel: Option<CancelToken>,
    /// Where to say which thread runs a host function now (a session
    /// refuses calls from it: they would wait for themselves).
    serving: Option<ServingThread>,
    /// Set when the exec ran out of time in a host call (see [`OutOfTime`]).
    out_of_time: OutOfTime,
}

/// Whether an exec ran out of time in a host call: the code then got an
/// exception from the call, perhaps before the tier saw its limit, and the
/// exec's outcome must still be the timeout it was.
/// (None for an exec without functions: it makes no host call, and a
/// one-shot task on the wasm tier should not pay for the flag.)
#[derive(Clone, Default)]
pub(crate) struct OutOfTime(Option<std::sync::Arc<std::sync::atomic::AtomicBool>>);

impl OutOfTime {
    fn set(&self) {
        if let Some(flag) = &self.0 {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Makes `result` the wall-clock timeout if the exec ran out of time in
    /// a host call and no other limit is its outcome; true if it did.
    pub(crate) fn settle(
        &self,
        result: &mut Result<Value, crate::task::TaskError>,
        config: &SandboxConfig,
    ) -> bool {
        use crate::task::ErrorKind;
        let limited = matches!(
            result.as_ref().map_err(crate::task::TaskError::kind),
            Err(ErrorKind::Timeout | ErrorKind::Cancelled | ErrorKind::MemoryLimit)
        );
        let out = self
            .0
            .as_ref()
            .is_some_and(|flag| flag.load(std::sync::atomic::Ordering::Relaxed));
        if !out || limited {
            return false;
        }
        *result = Err(crate::task::TaskError::wall_timeout(config.timeout));
        true
    }
}

/// The thread running one of a session's host functions, if any.
pub(crate) type ServingThread = std::sync::Arc<std::sync::Mutex<Option<std::thread::ThreadId>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    name: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
}

impl HostCalls {
    /// An exec without host functions: every call is refused.
    pub(crate) fn none() -> HostCalls {
        HostCalls {
            functions: None,
            limits: HostLimits::default(),
            calls: 0,
            bytes_in: 0,
            bytes_out: 0,
            exhausted: None,
            deadline: Instant::now(),
            cancel: None,
            serving: None,
            out_of_time: OutOfTime::default(),
        }
    }

    /// An exec that starts now under `config`'s wall-clock limit.
    pub(crate) fn new(
        functions: Option<&HostFunctions>,
        config: &SandboxConfig,
        cancel: &CancelToken,
    ) -> HostCalls {
        HostCalls {
            limits: functions.map(HostFunctions::limits).unwrap_or_default(),
            functions: functions.cloned(),
            calls: 0,
            bytes_in: 0,
            bytes_out: 0,
            exhausted: None,
            // A limit too far off to add is no limit.
            deadline: Instant::now()
                .checked_add(config.timeout)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 32)),
            cancel: Some(cancel.clone()),
            serving: None,
            out_of_time: OutOfTime(Some(Default::default())),
        }
    }

    /// What says whether the exec ran out of time in a host call.
    pub(crate) fn out_of_time(&self) -> OutOfTime {
        self.out_of_time.clone()
    }

    /// These calls, saying in `serving` which thread runs a host function.
    pub(crate) fn serving(mut self, serving: &ServingThread) -> HostCalls {
        self.serving = Some(serving.clone());
        self
    }

    /// The names the driver is to define for the code (a JSON list).
    pub(crate) fn names(functions: Option<&HostFunctions>) -> Option<Value> {
        functions
            .filter(|f| !f.is_empty())
            .map(|f| json!(f.names().collect::<Vec<_>>()))
    }

    /// The most one call's request may take (its arguments' JSON): none
    /// without functions.
    pub(crate) fn max_request_bytes(&self) -> usize {
        match self.functions {
            Some(_) => usize::try_from(self.limits.max_bytes_in).unwrap_or(usize::MAX),
            None => 0,
        }
    }

    /// Serves one call from the sandbox: the reply's JSON.
    pub(crate) fn dispatch(&mut self, request: &[u8]) -> Vec<u8> {
        let reply = self.serve(request);
        let mut text = serde_json::to_vec(&reply).unwrap_or_else(|_| {
            br#"{"error":"the host function's result can't be encoded","type":"HostError"}"#
                .to_vec()
        });
        self.bytes_out = self.bytes_out.saturating_add(text.len() as u64);
        if self.bytes_out > self.limits.max_bytes_out {
            let message = self.exhaust(format!(
                "the host calls of this exec returned more than {} bytes, the most allowed",
                self.limits.max_bytes_out
            ));
            text = serde_json::to_vec(&limit(message)).unwrap_or_default();
        }
        text
    }

    fn mark_serving(&self, thread: Option<std::thread::ThreadId>) {
        if let Some(serving) = &self.serving {
            *serving.lock().unwrap_or_else(|e| e.into_inner()) = thread;
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
    }

    fn exhaust(&mut self, message: String) -> String {
        self.exhausted.get_or_insert(message).clone()
    }

    fn serve(&mut self, request: &[u8]) -> Value {
        if let Some(message) = &self.exhausted {
            return limit(message.clone());
        }
        self.calls = self.calls.saturating_add(1);
        self.bytes_in = self.bytes_in.saturating_add(request.len() as u64);
        if self.calls > self.limits.max_calls {
            let message = format!(
                "this exec made more than {} host calls, the most allowed",
                self.limits.max_calls
            );
            return limit(self.exhaust(message));
        }
        if self.bytes_in > self.limits.max_bytes_in {
            let message = format!(
                "the host calls of this exec sent more than {} bytes, the most allowed",
                self.limits.max_bytes_in
            );
            return limit(self.exhaust(message));
        }
        let Ok(Request { name, args, kwargs }) = serde_json::from_slice::<Request>(request) else {
            return error("HostError", "a malformed host call".into());
        };
        let Some(function) = self.functions.as_ref().and_then(|f| f.get(&name)).cloned() else {
            return error(
                "NameError",
                format!("no host function named '{name}' is registered"),
            );
        };
        if Instant::now() >= self.deadline {
            self.out_of_time.set();
        }
        if self.cancelled() || Instant::now() >= self.deadline {
            return error(
                "TimeoutError",
                format!("host function '{name}' was not called: the call is out of time"),
            );
        }
        let call = HostCall {
            name: name.clone(),
            args,
            kwargs,
        };
        let returned = match &*function {
            HostFunction::Sync(function) => {
                self.mark_serving(Some(std::thread::current().id()));
                let returned = catch_unwind(AssertUnwindSafe(|| function(call)))
                    .map_err(|_| format!("host function '{name}' failed (it panicked)"));
                self.mark_serving(None);
                if Instant::now() >= self.deadline {
                    self.out_of_time.set();
                }
                returned
            }
            HostFunction::Async { function, runtime } => self.wait(function(call), runtime, &name),
        };
        match returned {
            Ok(Ok(value)) => json!({ "ok": value }),
            Ok(Err(failure)) => error("HostError", failure.message().to_string()),
            Err(message) => error("HostError", message),
        }
    }

    /// Runs an async host function to its end, or until the exec's
    /// deadline or cancel (then it is dropped).
    fn wait(
        &self,
        future: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Value, crate::task::HostError>> + Send>,
        >,
        runtime: &Option<tokio::runtime::Handle>,
        name: &str,
    ) -> Result<Result<Value, crate::task::HostError>, String> {
        let handle = match runtime {
            Some(handle) => handle.clone(),
            None => own_runtime()
                .map_err(|e| format!("host function '{name}' can't run: {e}"))?
                .handle()
                .clone(),
        };
        let (done, returned) = std::sync::mpsc::channel();
        let task = handle.spawn(async move {
            let _ = done.send(future.await);
        });
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if self.cancelled() || left.is_zero() {
                task.abort();
                if left.is_zero() {
                    self.out_of_time.set();
                }
                return Err(format!(
                    "host function '{name}' was stopped: the call is out of time"
                ));
            }
            match returned.recv_timeout(left.min(Duration::from_millis(20))) {
                Ok(result) => return Ok(result),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("host function '{name}' failed (it panicked)"))
                }
            }
        }
    }
}

fn error(type_name: &str, message: String) -> Value {
    json!({ "error": message, "type": type_name })
}

fn limit(message: String) -> Value {
    error("HostCallLimitError", message)
}

/// Lattice's runtime for async host functions registered outside a
/// multi-threaded Tokio runtime.
fn own_runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: super::OnceOk<tokio::runtime::Runtime> = super::OnceOk::new();
    RUNTIME.get_or_try_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lattice-host-fn")
            .enable_all()
            .build()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::HostError;

    fn reply(calls: &mut HostCalls, request: &str) -> Value {
        serde_json::from_slice(&calls.dispatch(request.as_bytes())).unwrap()
    }

    #[test]
    fn calls_are_checked_counted_and_answered() {
        let functions = HostFunctions::new()
            .register("add", |call| {
                Ok(json!(call
                    .args
                    .iter()
                    .filter_map(Value::as_i64)
                    .sum::<i64>()))
            })
            .register("fail", |_| Err(HostError::new("no such city")))
            .register("boom", |_| panic!("host internals"))
            .register_async("later", |call| async move { Ok(json!(call.kwargs)) })
            .with_limits(HostLimits {
                max_calls: 6,
                ..HostLimits::default()
            });
        let mut calls = HostCalls::new(
            Some(&functions),
            &SandboxConfig::default(),
            &CancelToken::new(),
        );
        assert_eq!(
            reply(&mut calls, r#"{"name":"add","args":[1,2]}"#),
            json!({"ok": 3})
        );
        assert_eq!(
            reply(&mut calls, r#"{"name":"fail"}"#),
            json!({"error": "no such city", "type": "HostError"})
        );
        let boom = reply(&mut calls, r#"{"name":"boom"}"#);
        assert_eq!(boom["type"], "HostError");
        assert!(!boom["error"].as_str().unwrap().contains("internals"));
        assert_eq!(
            reply(&mut calls, r#"{"name":"later","kwargs":{"a":1}}"#),
            json!({"ok": {"a": 1}})
        );
        assert_eq!(
            reply(&mut calls, r#"{"name":"open","args":[]}"#)["type"],
            "NameError"
        );
        assert_eq!(reply(&mut calls, "not json")["type"], "HostError");
        // The seventh call is past the limit, and so is every later one.
        assert_eq!(
            reply(&mut calls, r#"{"name":"add"}"#)["type"],
            "HostCallLimitError"
        );
        assert_eq!(
            reply(&mut calls, r#"{"name":"add"}"#)["type"],
            "HostCallLimitError"
        );
    }

    #[test]
    fn an_exec_without_functions_refuses_every_call() {
        let mut calls = HostCalls::none();
        assert_eq!(reply(&mut calls, r#"{"name":"add"}"#)["type"], "NameError");
    }

    #[test]
    fn bytes_out_are_capped_and_an_async_call_ends_at_the_deadline() {
        let functions = HostFunctions::new()
            .register("big", |_| Ok(json!("x".repeat(100))))
            .register_async("never", |_| async {
                std::future::pending::<()>().await;
                Ok(Value::Null)
            })
            .with_limits(HostLimits {
                max_bytes_out: 150,
                ..HostLimits::default()
            });
        let config = SandboxConfig {
            timeout: Duration::from_millis(200),
            ..SandboxConfig::default()
        };
        let mut calls = HostCalls::new(Some(&functions), &config, &CancelToken::new());
        assert!(reply(&mut calls, r#"{"name":"big"}"#).get("ok").is_some());
        assert_eq!(
            reply(&mut calls, r#"{"name":"big"}"#)["type"],
            "HostCallLimitError"
        );
        let mut calls = HostCalls::new(Some(&functions), &config, &CancelToken::new());
        let started = Instant::now();
        assert_eq!(
            reply(&mut calls, r#"{"name":"never"}"#)["type"],
            "HostError"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
