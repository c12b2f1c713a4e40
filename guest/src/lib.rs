//! lattice-guest: RustPython with the lattice CodeRunner driver loaded.
//!
//! One interpreter setup for both places Python runs in-process: the wasm
//! tier's guest (`main.rs`, compiled to wasm32-wasip1 and snapshotted) and
//! the none tier's native library (`native.rs`, loaded by the host with
//! `dlopen`).

use rustpython::InterpreterBuilderExt;
use rustpython_vm::builtins::{PyStr, PyStrRef};
use rustpython_vm::compiler::Mode;
use rustpython_vm::{Interpreter, PyObjectRef, PyResult, Settings, VirtualMachine};

#[cfg(not(target_family = "wasm"))]
pub mod native;
mod traceback;

/// The CodeRunner driver shared with the CPython tiers.
const DRIVER_SRC: &str = include_str!("../../src/sandbox/driver.py");

/// Run after the driver is loaded. Pre-imports stdlib modules that tasks
/// commonly use, but never `random` (a snapshot would freeze its seed): any
/// module whose import pulls in `random` is removed from `sys.modules` again,
/// with everything it brought in, so it is imported fresh (and seeded fresh)
/// by the task that needs it.
const PRELOAD_SRC: &str = r#"
import sys
import time as _time
# WASI has no time zones: the guest's clock is UTC. RustPython leaves these
# out, and `_strptime` (datetime.strptime) needs them.
for _k, _v in (("tzname", ("UTC", "UTC")), ("timezone", 0), ("altzone", 0), ("daylight", 0)):
    if not hasattr(_time, _k):
        setattr(_time, _k, _v)
_PRELOAD = (
    "json", "re", "math", "cmath", "collections", "collections.abc", "itertools", "functools",
    "operator", "string", "datetime", "time", "decimal", "fractions", "numbers", "heapq",
    "bisect", "dataclasses", "enum", "typing", "copy", "textwrap", "base64", "binascii",
    "hashlib", "struct", "unicodedata", "array", "io", "os", "traceback", "types",
    "contextlib", "abc", "keyword", "pprint", "reprlib", "weakref", "warnings", "ast",
    "_random", "linecache", "tokenize", "_strptime", "calendar",
)
_skipped = []
for _name in _PRELOAD:
    _before = set(sys.modules)
    try:
        __import__(_name)
    except Exception as _e:
        _skipped.append((_name, repr(_e)))
        continue
    if "random" in sys.modules:
        for _k in set(sys.modules) - _before:
            del sys.modules[_k]
        _skipped.append((_name, "imports random"))
assert "random" not in sys.modules
import gc as _gc
_gc.collect()
"#;

/// Tasks run through the driver once before the wasm guest's snapshot
/// ([`Guest::warm_up`]): the code they go through (the driver's, the
/// traceback formatter's, the regex compiler's, common stdlib paths) is then
/// already specialised and its caches filled in the snapshot, instead of
/// being so anew by every task on a fresh copy of it. They use nothing a
/// task could see afterwards; what they leave is cleared by
/// [`WARM_UP_CLEANUP_SRC`].
const WARM_UP_REQUESTS: [&str; 6] = [
    r#"{"code":"def f(x):\n    return x + 1\n","input":1}"#,
    r#"{"code":"def f(x):\n    return {'a': [x, 1.5, 'b', None, True], 'n': len(x)}\n","input":{"k":[1,"s",2.5,null,false]}}"#,
    r#"{"code":"def helper(x):\n    return 1 / x\n\ndef f(x):\n    d = {}\n    return helper(x) + d['k']\n","input":0}"#,
    r#"{"code":"def f(x):\n    return int(x)\n","input":"not a number"}"#,
    r#"{"code":"import collections, json, re\n\ndef f(x):\n    counts = collections.Counter(re.findall(r'\\d+', x)).most_common(1)\n    return json.loads(json.dumps({'c': counts, 's': re.sub(r'\\s+', ' ', x).split()}))\n","input":"1 2  2 3"}"#,
    r#"{"code":"def f(a, b=0, *, c=0):\n    return sorted([a, b, c], reverse=True)\n","args":[3,1],"kwargs":{"c":2}}"#,
];

/// Clears what [`WARM_UP_REQUESTS`] left: their source in `linecache`, the
/// regexes they compiled, their garbage.
const WARM_UP_CLEANUP_SRC: &str = r#"
import gc, linecache, re
linecache.cache.pop("<task>", None)
re.purge()
gc.collect()
"#;

/// An interpreter with the driver loaded.
pub struct Guest {
    pub interp: Interpreter,
    pub run_request: PyObjectRef,
}

/// Builds the interpreter: isolated settings, frozen stdlib, the driver
/// as `lattice_driver`, the common modules imported. `init` runs on the VM
/// before anything else (the native library installs its signal channel).
pub fn build(init: impl FnOnce(&mut VirtualMachine) + 'static) -> PyResult<Guest> {
    let mut settings = Settings::default();
    settings.isolated = true;
    settings.ignore_environment = true;
    settings.import_site = false;
    settings.user_site_directory = false;
    settings.safe_path = true;
    settings.write_bytecode = false;
    settings.install_signal_handlers = false;
    settings.buffered_stdio = false;
    let interp = Interpreter::builder(settings)
        .init_stdlib()
        .init_hook(init)
        .build();
    let run_request = interp.enter(|vm| -> PyResult<PyObjectRef> {
        let code = vm
            .compile(DRIVER_SRC, Mode::Exec, "lattice_driver.py")
            .map_err(|e| e.into_pyexception(vm, Some(DRIVER_SRC)))?;
        let module = rustpython_vm::import::import_code_obj(vm, "lattice_driver", code, true)?;
        let run_request = module.get_attr("run_request", vm)?;
        module.set_attr(
            "_host_transport",
            vm.new_function("_host_transport", host_transport),
            vm,
        )?;
        module.set_attr(
            "_native_format_common",
            vm.new_function("_native_format_common", traceback::format_common),
            vm,
        )?;
        #[cfg(target_family = "wasm")]
        for (name, function) in [
            (
                "_code_cache_get",
                vm.new_function("_code_cache_get", code_cache::get),
            ),
            (
                "_code_cache_put",
                vm.new_function("_code_cache_put", code_cache::put),
            ),
            (
                "_regex_cache_get",
                vm.new_function("_regex_cache_get", code_cache::regexes),
            ),
            (
                "_regex_cache_put",
                vm.new_function("_regex_cache_put", code_cache::put_regexes),
            ),
            (
                "_regex_cache_report",
                vm.new_function("_regex_cache_report", code_cache::report_regexes),
            ),
        ] {
            module.set_attr(name, function, vm)?;
        }
        // Not importable by the task: only this reference reaches it.
        vm.sys_module
            .get_attr("modules", vm)?
            .del_item("lattice_driver", vm)?;
        let scope = vm.new_scope_with_builtins();
        vm.run_string(scope, PRELOAD_SRC, "<lattice_preload>")?;
        Ok(run_request)
    });
    match run_request {
        Ok(run_request) => Ok(Guest {
            interp,
            run_request,
        }),
        Err(exc) => {
            interp.enter(|vm| vm.print_exception(&exc));
            Err(exc)
        }
    }
}

impl Guest {
    /// Runs [`WARM_UP_REQUESTS`] and clears what they left. For the wasm
    /// guest's snapshot only: the none tier's interpreter lives across its
    /// tasks and warms up with them, and its first task would wait for this.
    pub fn warm_up(&self) -> PyResult<()> {
        self.interp.enter(|vm| {
            for request in WARM_UP_REQUESTS {
                self.run_request.call((vm.ctx.new_str(request),), vm)?;
            }
            let scope = vm.new_scope_with_builtins();
            vm.run_string(scope, WARM_UP_CLEANUP_SRC, "<lattice_warm_up>")?;
            Ok(())
        })
    }

    /// Runs one request through the driver: the envelope text, or the
    /// driver's own failure (printed to the task's stderr).
    pub fn run(&self, vm: &VirtualMachine, request: String) -> Option<String> {
        let returned = self.run_request.call((vm.ctx.new_str(request),), vm);
        flush_std(vm);
        match returned.and_then(|answer| envelope(vm, &answer)) {
            Ok(envelope) => Some(envelope),
            Err(exc) => {
                vm.print_exception(&exc);
                flush_std(vm);
                None
            }
        }
    }
}

/// The driver's way to the host's functions (`_host_transport` in
/// driver.py): a call's request (JSON text) in, the host's reply out.
fn host_transport(request: PyStrRef, vm: &VirtualMachine) -> PyResult<String> {
    String::from_utf8(host_call(request.as_bytes()))
        .map_err(|_| vm.new_value_error("the host's reply is not UTF-8"))
}

/// One host-function call through the Wasm host's imports.
#[cfg(target_family = "wasm")]
fn host_call(request: &[u8]) -> Vec<u8> {
    #[link(wasm_import_module = "lattice")]
    unsafe extern "C" {
        /// Serves the call; returns the reply's length.
        #[link_name = "host_call"]
        fn lattice_host_call(ptr: *const u8, len: usize) -> usize;
        /// Copies the reply into `ptr`.
        #[link_name = "host_reply_read"]
        fn lattice_host_reply_read(ptr: *mut u8);
    }
    let len = unsafe { lattice_host_call(request.as_ptr(), request.len()) };
    let mut reply = vec![0u8; len];
    unsafe { lattice_host_reply_read(reply.as_mut_ptr()) };
    reply
}

/// One host-function call through the none tier's host callback.
#[cfg(not(target_family = "wasm"))]
fn host_call(request: &[u8]) -> Vec<u8> {
    native::host_call(request)
}

/// The driver's way to the compiled code the host keeps across tasks
/// (`_compile_task` in driver.py; the host's side and its rules are in
/// src/sandbox/wasm/code_cache.rs).
#[cfg(target_family = "wasm")]
mod code_cache {
    use rustpython_vm::builtins::PyBytesRef;
    use rustpython_vm::{PyObjectRef, VirtualMachine};

    #[link(wasm_import_module = "lattice")]
    unsafe extern "C" {
        /// The task's one question: the length of the compiled code kept
        /// for its source, -1 if the host wants it stored, else -2.
        #[link_name = "code_cache_len"]
        fn lattice_code_cache_len() -> i32;
        /// Copies the kept code into `ptr`.
        #[link_name = "code_cache_read"]
        fn lattice_code_cache_read(ptr: *mut u8);
        /// Hands the compiled code to the host.
        #[link_name = "code_cache_store"]
        fn lattice_code_cache_store(ptr: *const u8, len: usize) -> i32;
        /// Right after the code was read: the length of the answer about
        /// the source's regexes, else -2.
        #[link_name = "regex_cache_len"]
        fn lattice_regex_cache_len() -> i32;
        /// Copies that answer into `ptr`.
        #[link_name = "regex_cache_read"]
        fn lattice_regex_cache_read(ptr: *mut u8);
        /// Hands what the wanted patterns compiled to to the host.
        #[link_name = "regex_cache_store"]
        fn lattice_regex_cache_store(ptr: *const u8, len: usize) -> i32;
        /// Tells the host which patterns the task compiled.
        #[link_name = "regex_cache_report"]
        fn lattice_regex_cache_report(ptr: *const u8, len: usize) -> i32;
    }

    /// The host's answer of length `len` (copied in by `read`), or None
    /// when `len` says there is none.
    fn answer(
        len: i32,
        read: unsafe extern "C" fn(*mut u8),
        vm: &VirtualMachine,
    ) -> Option<PyObjectRef> {
        let len = usize::try_from(len).ok()?;
        let mut bytes = vec![0u8; len];
        unsafe { read(bytes.as_mut_ptr()) };
        Some(vm.ctx.new_bytes(bytes).into())
    }

    /// `_code_cache_get()`: the kept code (marshal), `b""` when the host
    /// wants this compile, None otherwise.
    pub(crate) fn get(vm: &VirtualMachine) -> PyObjectRef {
        let len = unsafe { lattice_code_cache_len() };
        match answer(len, lattice_code_cache_read, vm) {
            Some(compiled) => compiled,
            None if len == -1 => vm.ctx.new_bytes(Vec::new()).into(),
            None => vm.ctx.none(),
        }
    }

    /// `_regex_cache_get()`, right after the kept code was read: `b"K"` and
    /// what the source's patterns compiled to, `b"W"` and the patterns to
    /// compile, `b"R"` when the host wants to hear which the task compiles,
    /// None otherwise.
    pub(crate) fn regexes(vm: &VirtualMachine) -> PyObjectRef {
        let len = unsafe { lattice_regex_cache_len() };
        answer(len, lattice_regex_cache_read, vm).unwrap_or_else(|| vm.ctx.none())
    }

    /// Hands `bytes` to the host through `store`, after what was printed
    /// (a compile's warnings) reached it: the host then keeps nothing.
    fn hand_over(
        bytes: PyBytesRef,
        store: unsafe extern "C" fn(*const u8, usize) -> i32,
        vm: &VirtualMachine,
    ) -> bool {
        super::flush_std(vm);
        let bytes = bytes.as_bytes();
        unsafe { store(bytes.as_ptr(), bytes.len()) == 1 }
    }

    /// `_code_cache_put(compiled)`: hands the compile over.
    pub(crate) fn put(compiled: PyBytesRef, vm: &VirtualMachine) -> bool {
        hand_over(compiled, lattice_code_cache_store, vm)
    }

    /// `_regex_cache_put(compiled)`: hands over what the wanted patterns
    /// compiled to.
    pub(crate) fn put_regexes(compiled: PyBytesRef, vm: &VirtualMachine) -> bool {
        hand_over(compiled, lattice_regex_cache_store, vm)
    }

    /// `_regex_cache_report(records)`: says which patterns the task
    /// compiled.
    pub(crate) fn report_regexes(records: PyBytesRef, vm: &VirtualMachine) -> bool {
        hand_over(records, lattice_regex_cache_report, vm)
    }
}

/// The envelope of the driver's answer, written here rather than by Python
/// code the task could replace: `("ok", result_json)` or `(kind, type,
/// message, traceback)`, the kind a task error or an invalid task — the
/// host takes no other from inside the sandbox.
fn envelope(vm: &VirtualMachine, answer: &PyObjectRef) -> PyResult<String> {
    let parts: Vec<PyObjectRef> = answer.try_to_value(vm)?;
    let text = |part: &PyObjectRef| -> PyResult<String> {
        part.downcast_ref::<PyStr>()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| vm.new_type_error("the driver's answer holds a non-string"))
    };
    match parts.as_slice() {
        [status, result] if text(status)? == "ok" => Ok(format!(
            "{{\"status\":\"ok\",\"result\":{}}}",
            text(result)?
        )),
        [kind, type_name, message, traceback] => {
            let kind = text(kind)?;
            if kind != "task_error" && kind != "invalid_task" {
                return Err(vm.new_value_error(format!("the driver's answer has the kind {kind}")));
            }
            Ok(format!(
                "{{\"status\":\"error\",\"error\":{{\"kind\":\"{kind}\",\"type\":{},\"message\":{},\"traceback\":{}}}}}",
                json_string(&text(type_name)?),
                json_string(&text(message)?),
                json_string(&text(traceback)?)
            ))
        }
        _ => Err(vm.new_type_error("the driver's answer is malformed")),
    }
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn flush_std(vm: &VirtualMachine) {
    for name in ["__stdout__", "__stderr__", "stdout", "stderr"] {
        if let Ok(stream) = vm.sys_module.get_attr(name, vm) {
            let _ = vm.call_method(&stream, "flush", ());
        }
    }
}
