//! The native part of the `lattice_wasm` Python package: an executor and a
//! session over the `lattice` library, spoken in the library's own JSON
//! (task lines in, result lines out), so the task and result codec exists
//! once. The Python layer (`python/lattice_wasm`) turns that JSON into
//! objects and typed exceptions.
//!
//! Every blocking call releases the GIL. Waiting for tasks and session
//! calls is done in short slices so that Ctrl-C (a pending Python signal)
//! stops it: the task or call is cancelled and the `KeyboardInterrupt`
//! raised.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lattice::executor::{create_executor, ExecutorBackend, ExecutorOptions, RayOptions};
use lattice::sandbox::{CancelToken, SandboxConfig};
use lattice::session::{Call, HostError, HostFunctions, Reply, Session as LatticeSession};
use lattice::task::json::{outcome_to_json, parse_task};
use lattice::task::{ExecutorType, TaskError, TaskHandle, TaskOutcome, TaskSubmission};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::{Map, Value};

/// How often a blocked call looks for a pending signal (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// A `TaskError` as the package's typed exception (`lattice_wasm.errors`).
fn raise(py: Python<'_>, error: &TaskError) -> PyErr {
    let record = serde_json::to_string(&error.to_record()).expect("an error record serialises");
    match py
        .import("lattice_wasm.errors")
        .and_then(|errors| errors.getattr("from_record_json"))
        .and_then(|from_record| from_record.call1((record,)))
    {
        Ok(exception) => PyErr::from_value(exception),
        Err(import_failed) => import_failed,
    }
}

fn json_arg<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> PyResult<T> {
    serde_json::from_str(text).map_err(|e| PyRuntimeError::new_err(format!("{what}: {e}")))
}

/// Host functions whose calls go to one Python callable,
/// `dispatch(name, args_json, kwargs_json) -> (ok, result_json_or_message)`
/// (the Python layer calls the user's function, awaits it if it is async,
/// and turns its exception into the message the sandbox sees).
fn host_functions(
    names: Option<Vec<String>>,
    dispatch: Option<Py<PyAny>>,
) -> Option<HostFunctions> {
    let (names, dispatch) = (names?, Arc::new(dispatch?));
    let mut functions = HostFunctions::new();
    for name in names {
        let dispatch = Arc::clone(&dispatch);
        functions = functions.register(name, move |call| {
            let args =
                serde_json::to_string(&call.args).map_err(|e| HostError::new(e.to_string()))?;
            let kwargs =
                serde_json::to_string(&call.kwargs).map_err(|e| HostError::new(e.to_string()))?;
            let (ok, text): (bool, String) = Python::attach(|py| {
                dispatch
                    .call1(py, (call.name.as_str(), args, kwargs))
                    .and_then(|answer| answer.extract(py))
            })
            .map_err(|e| {
                // Ctrl-C while the host function ran: the code gets an
                // error, and the signal stays pending for the thread that
                // waits on the call (which cancels it).
                Python::attach(|py| {
                    if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
                        // SAFETY: called with the GIL held; only sets a flag.
                        unsafe { pyo3::ffi::PyErr_SetInterrupt() };
                    }
                });
                HostError::new(format!("the host function was interrupted: {e}"))
            })?;
            if ok {
                serde_json::from_str(&text).map_err(|e| HostError::new(e.to_string()))
            } else {
                Err(HostError::new(text))
            }
        });
    }
    Some(functions)
}

/// A task line plus host functions, as a submission.
fn submission(
    task_json: &str,
    names: Option<Vec<String>>,
    dispatch: Option<Py<PyAny>>,
) -> Result<TaskSubmission, TaskError> {
    let mut task = parse_task(task_json)?;
    if let Some(functions) = host_functions(names, dispatch) {
        task = task.with_host_functions(functions);
    }
    Ok(task)
}

/// Waits for `done` with the GIL released, looking for Ctrl-C between
/// slices; `on_interrupt` runs before the signal's exception is raised.
fn wait_interruptibly<T: Send>(
    py: Python<'_>,
    mut poll: impl FnMut(Duration) -> Option<T> + Send,
    on_interrupt: impl FnOnce(),
) -> PyResult<T> {
    loop {
        if let Some(value) = py.detach(|| poll(SIGNAL_POLL)) {
            return Ok(value);
        }
        if let Err(interrupt) = py.check_signals() {
            on_interrupt();
            return Err(interrupt);
        }
    }
}

/// An executor (local or Ray) and the tasks submitted to it.
#[pyclass(module = "lattice_wasm._lattice", frozen)]
struct Executor {
    backend: Arc<dyn ExecutorBackend>,
    kind: ExecutorType,
}

impl Executor {
    fn handle(&self, id: u64) -> TaskHandle {
        TaskHandle {
            handle_id: id,
            executor_type: self.kind,
        }
    }

    /// Waits up to `timeout` seconds (None: no limit) until every handle
    /// is done, the GIL released, Ctrl-C checked between slices (it runs
    /// `on_interrupt`); (done, pending).
    fn wait_for(
        &self,
        py: Python<'_>,
        handles: &[TaskHandle],
        timeout: Option<f64>,
        on_interrupt: impl FnOnce(),
    ) -> PyResult<(Vec<TaskHandle>, Vec<TaskHandle>)> {
        let deadline = deadline(timeout);
        let backend = &self.backend;
        wait_interruptibly(
            py,
            |slice| {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let (done, pending) = backend.wait(handles, left.map_or(slice, |l| l.min(slice)));
                (pending.is_empty() || left.is_some_and(|l| l <= slice)).then_some((done, pending))
            },
            on_interrupt,
        )
    }

    /// The result line of `handle`, waiting for it (up to `timeout`, then
    /// None). Ctrl-C cancels the task.
    fn outcome(
        &self,
        py: Python<'_>,
        handle: &TaskHandle,
        timeout: Option<f64>,
    ) -> PyResult<Option<String>> {
        let (done, _) = self.wait_for(py, std::slice::from_ref(handle), timeout, || {
            self.backend.cancel(handle);
        })?;
        if done.is_empty() {
            return Ok(None);
        }
        let outcome = py.detach(|| self.backend.get_result(handle));
        Ok(Some(outcome_to_json(&outcome)))
    }

    /// Cancels tasks and forgets them once they have ended (a running
    /// one ends promptly when cancelled).
    fn discard(&self, py: Python<'_>, handles: &[TaskHandle]) {
        py.detach(|| {
            for handle in handles {
                self.backend.cancel(handle);
            }
            for handle in handles {
                self.backend.get_result(handle);
                self.backend.release(handle);
            }
        })
    }
}

/// The instant `timeout` seconds from now (None: none, also for a timeout
/// too large to have one); a negative or NaN timeout is now.
fn deadline(timeout: Option<f64>) -> Option<Instant> {
    let seconds = timeout?;
    let seconds = if seconds.is_nan() {
        0.0
    } else {
        seconds.max(0.0)
    };
    Instant::now().checked_add(Duration::try_from_secs_f64(seconds).ok()?)
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Shutting down joins the workers; one may be in a host function
        // waiting for the GIL.
        Python::attach(|py| {
            py.detach(|| {
                let _ = self.backend.shutdown();
            })
        });
    }
}

#[pymethods]
impl Executor {
    /// `Executor(kind, options_json)`: kind `local` or `ray`; options
    /// `{max_workers, sandbox, address, dashboard, python, binary,
    /// head_port, head_dashboard_port, default_cpus, connect_timeout_s}`.
    #[new]
    fn new(py: Python<'_>, kind: &str, options_json: &str) -> PyResult<Executor> {
        let mut options: Map<String, Value> = json_arg("executor options", options_json)?;
        let invalid = |message: String| raise(py, &TaskError::invalid(message));
        let kind = match kind {
            "local" => ExecutorType::Local,
            "ray" => ExecutorType::Ray,
            other => return Err(invalid(format!("no executor type {other:?}: local or ray"))),
        };
        let mut settings = ExecutorOptions::default();
        let mut ray = RayOptions::default();
        let text = |v: Value| v.as_str().map(str::to_string);
        for (key, value) in std::mem::take(&mut options) {
            if value.is_null() {
                continue;
            }
            let bad = || invalid(format!("executor option {key} can't be {value}"));
            match key.as_str() {
                "max_workers" => {
                    settings.max_workers =
                        Some(value.as_u64().filter(|&n| n > 0).ok_or_else(bad)? as usize)
                }
                "sandbox" => {
                    settings.sandbox = Some(
                        serde_json::from_value::<SandboxConfig>(value.clone())
                            .map_err(|e| invalid(format!("sandbox configuration: {e}")))?,
                    )
                }
                "address" => ray.address = Some(text(value.clone()).ok_or_else(bad)?),
                "dashboard" => ray.dashboard = Some(text(value.clone()).ok_or_else(bad)?),
                "python" => ray.python = PathBuf::from(text(value.clone()).ok_or_else(bad)?),
                "binary" => ray.binary = Some(PathBuf::from(text(value.clone()).ok_or_else(bad)?)),
                "head_port" => {
                    ray.head_port = value
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(bad)?
                }
                "head_dashboard_port" => {
                    ray.head_dashboard_port = value
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(bad)?
                }
                "default_cpus" => {
                    ray.default_cpus = value.as_f64().filter(|c| *c > 0.0).ok_or_else(bad)?
                }
                "connect_timeout_s" => {
                    ray.connect_timeout = value
                        .as_f64()
                        .and_then(lattice::task::limit_seconds)
                        .ok_or_else(bad)?
                }
                _ => return Err(invalid(format!("unknown executor option {key}"))),
            }
        }
        settings.ray = ray;
        let backend = create_executor(kind, settings).map_err(|e| raise(py, &e))?;
        Ok(Executor {
            backend: Arc::from(backend),
            kind,
        })
    }

    /// `local` or `ray`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.kind {
            ExecutorType::Local => "local",
            ExecutorType::Ray => "ray",
        }
    }

    fn initialize(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.backend.initialize())
            .map_err(|e| raise(py, &e))
    }

    /// Queues a task line (with host functions: their names and the
    /// dispatcher); returns its handle id.
    #[pyo3(signature = (task_json, function_names=None, dispatch=None))]
    fn submit(
        &self,
        py: Python<'_>,
        task_json: &str,
        function_names: Option<Vec<String>>,
        dispatch: Option<Py<PyAny>>,
    ) -> PyResult<u64> {
        let task = submission(task_json, function_names, dispatch).map_err(|e| raise(py, &e))?;
        let handle = py
            .detach(|| self.backend.submit(task))
            .map_err(|e| raise(py, &e))?;
        Ok(handle.handle_id)
    }

    /// The result line of a task, waiting up to `timeout` seconds (None:
    /// until it ends); None if it has not ended by then. Ctrl-C cancels it.
    #[pyo3(signature = (handle_id, timeout=None))]
    fn result(
        &self,
        py: Python<'_>,
        handle_id: u64,
        timeout: Option<f64>,
    ) -> PyResult<Option<String>> {
        self.outcome(py, &self.handle(handle_id), timeout)
    }

    /// The result line of a task, waiting until it ends, and forgets the
    /// task. Ctrl-C cancels it (and it is forgotten once it has ended).
    fn take(&self, py: Python<'_>, handle_id: u64) -> PyResult<String> {
        let handle = self.handle(handle_id);
        match self.outcome(py, &handle, None) {
            Ok(line) => {
                self.backend.release(&handle);
                Ok(line.expect("no deadline: the task has ended"))
            }
            Err(interrupted) => {
                self.discard(py, std::slice::from_ref(&handle));
                Err(interrupted)
            }
        }
    }

    /// Runs a task line to its result line (submit, wait, forget).
    #[pyo3(signature = (task_json, function_names=None, dispatch=None))]
    fn run(
        &self,
        py: Python<'_>,
        task_json: &str,
        function_names: Option<Vec<String>>,
        dispatch: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let id = self.submit(py, task_json, function_names, dispatch)?;
        self.take(py, id)
    }

    /// Runs `template_json` once per input (each a JSON text), all queued
    /// at once; the result lines in input order. Ctrl-C cancels the rest.
    #[pyo3(signature = (template_json, inputs_json, function_names=None, dispatch=None))]
    fn map(
        &self,
        py: Python<'_>,
        template_json: &str,
        inputs_json: Vec<String>,
        function_names: Option<Vec<String>>,
        dispatch: Option<Py<PyAny>>,
    ) -> PyResult<Vec<String>> {
        let template =
            submission(template_json, function_names, dispatch).map_err(|e| raise(py, &e))?;
        let backend = &self.backend;
        // A task the executor refuses gets its error as its result line,
        // so every input has one.
        let handles: Vec<Result<TaskHandle, String>> = py.detach(|| {
            inputs_json
                .iter()
                .enumerate()
                .map(|(i, input)| {
                    let mut task = template.clone();
                    task.id = Some(Value::from(i));
                    let refused = |error| {
                        outcome_to_json(&TaskOutcome::from_error(Some(Value::from(i)), error))
                    };
                    match serde_json::from_str(input) {
                        Ok(input) => task.input = Some(input),
                        Err(e) => {
                            return Err(refused(TaskError::invalid(format!(
                                "input {i} is not JSON: {e}"
                            ))))
                        }
                    }
                    backend.submit(task).map_err(refused)
                })
                .collect()
        });
        let mut lines = Vec::with_capacity(handles.len());
        let mut next = 0;
        let cancel_rest = |from: usize| {
            let rest: Vec<TaskHandle> = handles[from..].iter().flatten().cloned().collect();
            self.discard(py, &rest);
        };
        while next < handles.len() {
            let finished = wait_interruptibly(
                py,
                |slice| {
                    let mut finished = Vec::new();
                    let deadline = Instant::now() + slice;
                    // Collects in order; stops at a task not done by the slice's end.
                    for entry in &handles[next..] {
                        let line = match entry {
                            Err(line) => line.clone(),
                            Ok(handle) => {
                                let left = deadline.saturating_duration_since(Instant::now());
                                let (done, _) = backend.wait(std::slice::from_ref(handle), left);
                                if done.is_empty() {
                                    break;
                                }
                                let outcome = backend.get_result(handle);
                                backend.release(handle);
                                outcome_to_json(&outcome)
                            }
                        };
                        finished.push(line);
                    }
                    (!finished.is_empty()).then_some(finished)
                },
                || cancel_rest(next),
            )?;
            next += finished.len();
            lines.extend(finished);
        }
        Ok(lines)
    }

    /// Waits up to `timeout` seconds (None: until all end; 0: just look)
    /// for the handles; returns (done, pending) ids in the order given.
    #[pyo3(signature = (handle_ids, timeout=None))]
    fn wait(
        &self,
        py: Python<'_>,
        handle_ids: Vec<u64>,
        timeout: Option<f64>,
    ) -> PyResult<(Vec<u64>, Vec<u64>)> {
        let handles: Vec<TaskHandle> = handle_ids.iter().map(|&id| self.handle(id)).collect();
        let (done, pending) = self.wait_for(py, &handles, timeout, || {})?;
        let ids = |list: Vec<TaskHandle>| list.into_iter().map(|h| h.handle_id).collect();
        Ok((ids(done), ids(pending)))
    }

    /// Cancels a task; False if it had ended or is unknown.
    fn cancel(&self, py: Python<'_>, handle_id: u64) -> bool {
        let handle = self.handle(handle_id);
        py.detach(|| self.backend.cancel(&handle))
    }

    /// Forgets an ended task.
    fn release(&self, handle_id: u64) {
        self.backend.release(&self.handle(handle_id));
    }

    /// Stops the executor (nothing it started keeps running).
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.backend.shutdown())
            .map_err(|e| raise(py, &e))
    }

    /// The nodes and their resources, as JSON.
    fn resources(&self, py: Python<'_>) -> PyResult<String> {
        let resources = py
            .detach(|| self.backend.get_available_resources())
            .map_err(|e| raise(py, &e))?;
        Ok(serde_json::to_string(&resources).expect("resources serialise"))
    }
}

/// A session on one tier: its replies as JSON (`Reply::to_json`).
#[pyclass(module = "lattice_wasm._lattice", frozen)]
struct Session {
    session: LatticeSession,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing waits for the interpreter, process or container to go;
        // a call's host function may be waiting for the GIL meanwhile.
        Python::attach(|py| py.detach(|| self.session.close()));
    }
}

/// Runs a session call with the GIL released, as its reply's JSON. On the
/// main thread (where Python handles Ctrl-C) it runs on a helper thread
/// while this one looks for a pending signal: Ctrl-C cancels the call (the
/// session is interrupted, as by a limit) and raises KeyboardInterrupt.
fn interruptible_call(
    py: Python<'_>,
    call: impl FnOnce(&CancelToken) -> Reply + Send,
) -> PyResult<String> {
    let cancel = CancelToken::new();
    // SAFETY: getpid and gettid only read the calling process's and thread's ids.
    let on_main_thread = unsafe { libc::gettid() == libc::getpid() };
    if !on_main_thread {
        return Ok(py.detach(|| call(&cancel)).to_json().to_string());
    }
    std::thread::scope(|scope| {
        let (sender, mut replies) = mpsc::channel();
        let token = &cancel;
        scope.spawn(move || {
            let _ = sender.send(call(token));
        });
        let mut interrupted = None;
        loop {
            // The receiver travels into the GIL-free closure and back (it is not Sync).
            let (back, received) = py.detach(move || {
                let received = replies.recv_timeout(SIGNAL_POLL);
                (replies, received)
            });
            replies = back;
            match received {
                Ok(reply) => {
                    return match interrupted {
                        Some(interrupt) => Err(interrupt),
                        None => Ok(reply.to_json().to_string()),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if interrupted.is_none() {
                        if let Err(interrupt) = py.check_signals() {
                            cancel.cancel();
                            interrupted = Some(interrupt);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PyRuntimeError::new_err("the session call's thread failed"))
                }
            }
        }
    })
}

#[pymethods]
impl Session {
    /// Opens a session under a sandbox configuration (JSON), or restores
    /// one from snapshot bytes.
    #[new]
    #[pyo3(signature = (config_json, idle_timeout_s=None, function_names=None, dispatch=None, snapshot=None))]
    fn new(
        py: Python<'_>,
        config_json: &str,
        idle_timeout_s: Option<f64>,
        function_names: Option<Vec<String>>,
        dispatch: Option<Py<PyAny>>,
        snapshot: Option<&[u8]>,
    ) -> PyResult<Session> {
        let config: SandboxConfig = serde_json::from_str(config_json).map_err(|e| {
            raise(
                py,
                &TaskError::invalid(format!("session configuration: {e}")),
            )
        })?;
        let mut builder = LatticeSession::builder(config);
        if let Some(seconds) = idle_timeout_s {
            let idle = lattice::task::limit_seconds(seconds).ok_or_else(|| {
                raise(
                    py,
                    &TaskError::invalid(format!(
                        "idle_timeout {seconds} is not a usable number of seconds"
                    )),
                )
            })?;
            builder = builder.idle_timeout(idle);
        }
        if let Some(functions) = host_functions(function_names, dispatch) {
            builder = builder.host_functions(functions);
        }
        let session = py
            .detach(|| match snapshot {
                Some(bytes) => builder.restore(bytes),
                None => builder.open(),
            })
            .map_err(|e| raise(py, &e))?;
        Ok(Session { session })
    }

    /// Runs code in the session's namespace; the reply as JSON.
    fn exec(&self, py: Python<'_>, code: &str) -> PyResult<String> {
        interruptible_call(py, |cancel| self.session.exec_cancellable(code, cancel))
    }

    /// Calls a function the session defined, with a call JSON
    /// (`{"input"}` or `{"args", "kwargs"}`); the reply as JSON.
    fn call(&self, py: Python<'_>, entry: &str, call_json: &str) -> PyResult<String> {
        let mut fields: Map<String, Value> = json_arg("call", call_json)?;
        let call = match (
            fields.remove("input"),
            fields.remove("args"),
            fields.remove("kwargs"),
        ) {
            (Some(input), None, None) => Call::input(input),
            (None, args, kwargs) => {
                let args = match args {
                    Some(Value::Array(args)) => args,
                    _ => Vec::new(),
                };
                let call = Call::args(args);
                match kwargs {
                    Some(Value::Object(kwargs)) => call.with_kwargs(kwargs),
                    _ => call,
                }
            }
            _ => {
                return Err(raise(
                    py,
                    &TaskError::invalid("give input, or args and kwargs, not both"),
                ))
            }
        };
        interruptible_call(py, |cancel| {
            self.session.call_cancellable(entry, call, cancel)
        })
    }

    /// The session as bytes (wasm tier).
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py
            .detach(|| self.session.snapshot())
            .map_err(|e| raise(py, &e))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// An independent copy (wasm tier).
    fn fork(&self, py: Python<'_>) -> PyResult<Session> {
        let session = py
            .detach(|| self.session.fork())
            .map_err(|e| raise(py, &e))?;
        Ok(Session { session })
    }

    /// The top-level statements of `code`, as a REPL reads them.
    fn statements(&self, py: Python<'_>, code: &str) -> PyResult<Vec<String>> {
        py.detach(|| self.session.statements(code))
            .map_err(|e| raise(py, &e))
    }

    /// Closes the session: its interpreter, process or container is gone
    /// when this returns.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.session.close())
    }

    #[getter]
    fn is_open(&self, py: Python<'_>) -> bool {
        py.detach(|| self.session.is_open())
    }

    #[getter]
    fn tier(&self) -> &'static str {
        self.session.tier().as_str()
    }

    /// The session's configuration, as JSON.
    #[getter]
    fn config(&self) -> String {
        serde_json::to_string(self.session.config()).expect("a configuration serialises")
    }
}

/// Sets how many sessions this process may have open at once.
#[pyfunction]
fn set_max_sessions(max: usize) {
    lattice::session::set_max_sessions(max);
}

/// Sets the process-wide sandbox configuration (JSON).
#[pyfunction]
fn set_sandbox_config(py: Python<'_>, config_json: &str) -> PyResult<()> {
    let config: SandboxConfig = serde_json::from_str(config_json).map_err(|e| {
        raise(
            py,
            &TaskError::invalid(format!("sandbox configuration: {e}")),
        )
    })?;
    lattice::sandbox::set_sandbox_config(config);
    Ok(())
}

/// The process-wide sandbox configuration (the defaults until set), as JSON.
#[pyfunction]
fn get_sandbox_config() -> String {
    serde_json::to_string(&lattice::sandbox::get_sandbox_config())
        .expect("a configuration serialises")
}

#[pymodule]
fn _lattice(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Executor>()?;
    m.add_class::<Session>()?;
    m.add_function(wrap_pyfunction!(set_max_sessions, m)?)?;
    m.add_function(wrap_pyfunction!(get_sandbox_config, m)?)?;
    m.add_function(wrap_pyfunction!(set_sandbox_config, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
