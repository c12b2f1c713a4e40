//! lattice-guest: RustPython compiled to wasm32-wasip1, driven by the lattice-wasm host.
//!
//! Interface (core module):
//! * export `wizer.initialize` — build the interpreter (frozen stdlib), load the driver module
//!   `lattice_driver`, pre-import commonly used stdlib modules. Run once by Wizer at snapshot
//!   time; the resulting memory image is what every task starts from.
//! * export `run` — read the whole of stdin (the request JSON), call
//!   `lattice_driver.run_request(text) -> str` and hand the returned envelope to the host via
//!   the import `lattice.result(ptr, len)`. If `wizer.initialize` never ran (raw module),
//!   `run` initializes first.
//! * user prints go to WASI fd 1 / fd 2; the guest itself never writes to stdout.
//!   If the driver itself fails, the traceback goes to stderr and `lattice.result` is not
//!   called; the host reports that as an internal error.

use std::cell::OnceCell;
use std::io::Read;

use rustpython::InterpreterBuilderExt;
use rustpython_vm::compiler::Mode;
use rustpython_vm::{Interpreter, PyObjectRef, PyResult, Settings, VirtualMachine};

/// The CodeRunner driver shared with the CPython tiers.
const DRIVER_SRC: &str = include_str!("../../src/runner/driver.py");

/// Run at snapshot time after the driver is loaded. Pre-imports stdlib modules that tasks
/// commonly use, but never `random` (its seed would be frozen into the snapshot): any module
/// whose import pulls in `random` is removed from `sys.modules` again, with everything it
/// brought in, so it is imported fresh (and seeded fresh) by the task that needs it.
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

struct Guest {
    interp: Interpreter,
    run_request: PyObjectRef,
}

thread_local! {
    // wasm32-wasip1 has no threads: this is a plain static.
    static GUEST: OnceCell<Guest> = const { OnceCell::new() };
}

#[link(wasm_import_module = "lattice")]
unsafe extern "C" {
    /// Hands the result envelope (UTF-8 JSON) to the host. The host copies it out.
    #[link_name = "result"]
    fn lattice_result(ptr: *const u8, len: usize);
}

unsafe extern "C" {
    /// Static constructors (wasi-libc environ init, ...). wasm-ld wraps every export of a
    /// *command* module in `__wasm_call_ctors`/`__wasm_call_dtors` unless the code calls
    /// `__wasm_call_ctors` explicitly; we call it once, so exports are not wrapped and the
    /// constructors' state is part of the snapshot.
    fn __wasm_call_ctors();
    /// wasi-libc: forget the preopen table captured at snapshot time, so the preopens the
    /// host gives this task's instance are found (wasi-libc populates it lazily, once).
    fn __wasilibc_reset_preopens();
}

fn print_exc(vm: &VirtualMachine, exc: rustpython_vm::builtins::PyBaseExceptionRef) {
    vm.print_exception(&exc);
}

fn build() -> Guest {
    let mut settings = Settings::default();
    settings.isolated = true;
    settings.ignore_environment = true;
    settings.import_site = false;
    settings.user_site_directory = false;
    settings.safe_path = true;
    settings.write_bytecode = false;
    settings.install_signal_handlers = false;
    settings.buffered_stdio = false;
    let interp = rustpython_vm::Interpreter::builder(settings).init_stdlib().build();
    let run_request = interp.enter(|vm| {
        let res: PyResult<PyObjectRef> = (|| {
            let code = vm
                .compile(DRIVER_SRC, Mode::Exec, "lattice_driver.py")
                .map_err(|e| e.into_pyexception(vm, Some(DRIVER_SRC)))?;
            let module = rustpython_vm::import::import_code_obj(vm, "lattice_driver", code, true)?;
            let f = module.get_attr("run_request", vm)?;
            let scope = vm.new_scope_with_builtins();
            vm.run_string(scope, PRELOAD_SRC, "<lattice_preload>")?;
            Ok(f)
        })();
        match res {
            Ok(f) => f,
            Err(exc) => {
                print_exc(vm, exc);
                std::process::abort();
            }
        }
    });
    Guest {
        interp,
        run_request,
    }
}

fn ensure_init() {
    GUEST.with(|g| {
        g.get_or_init(|| {
            unsafe { __wasm_call_ctors() };
            build()
        });
    });
}

#[unsafe(export_name = "wizer.initialize")]
pub extern "C" fn wizer_initialize() {
    ensure_init();
}

#[unsafe(export_name = "run")]
pub extern "C" fn run() {
    unsafe { __wasilibc_reset_preopens() };
    ensure_init();
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("lattice-guest: cannot read request from stdin: {e}");
        return;
    }
    GUEST.with(|g| {
        let g = g.get().expect("initialized");
        g.interp.enter(|vm| {
            let res = g.run_request.call((vm.ctx.new_str(input),), vm);
            flush_std(vm);
            match res.and_then(|v| v.str(vm)) {
                Ok(s) => {
                    let s = s.to_string_lossy();
                    unsafe { lattice_result(s.as_ptr(), s.len()) };
                }
                Err(exc) => {
                    print_exc(vm, exc);
                    flush_std(vm);
                }
            }
        })
    });
}

fn flush_std(vm: &VirtualMachine) {
    for name in ["__stdout__", "__stderr__", "stdout", "stderr"] {
        if let Ok(f) = vm.sys_module.get_attr(name, vm) {
            let _ = vm.call_method(&f, "flush", ());
        }
    }
}

fn main() {
    // Unused: the host calls the `run` export. Kept so this is an ordinary wasip1 command.
}
