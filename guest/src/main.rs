//! The wasm tier's guest: RustPython compiled to wasm32-wasip1, driven by
//! the lattice-wasm host.
//!
//! Interface (core module):
//! * export `wizer.initialize` — build the interpreter (see the library),
//!   run once by Wizer at snapshot time; the resulting memory image is what
//!   every task starts from.
//! * export `run` — read the whole of stdin (the request JSON), run it
//!   through the driver and hand the envelope to the host via the import
//!   `lattice.result(ptr, len)`. If `wizer.initialize` never ran (raw
//!   module), `run` initializes first.
//! * user prints go to WASI fd 1 / fd 2; the guest itself never writes to
//!   stdout. If the driver itself fails, the traceback goes to stderr and
//!   `lattice.result` is not called; the host reports that as an internal
//!   error.

use std::cell::OnceCell;
use std::io::Read;

use lattice_guest::Guest;

thread_local! {
    // wasm32-wasip1 has no threads: this is a plain static.
    static GUEST: OnceCell<Guest> = const { OnceCell::new() };
}

#[cfg(target_family = "wasm")]
#[link(wasm_import_module = "lattice")]
unsafe extern "C" {
    /// Hands the result envelope (UTF-8 JSON) to the host. The host copies it out.
    #[link_name = "result"]
    fn lattice_result(ptr: *const u8, len: usize);
}

#[cfg(target_family = "wasm")]
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

#[cfg(target_family = "wasm")]
fn ensure_init() {
    GUEST.with(|guest| {
        guest.get_or_init(|| {
            unsafe { __wasm_call_ctors() };
            // The traceback is on stderr already; the host reports the failure.
            lattice_guest::build(|_| {}).unwrap_or_else(|_| std::process::abort())
        });
    });
}

#[cfg(target_family = "wasm")]
#[unsafe(export_name = "wizer.initialize")]
pub extern "C" fn wizer_initialize() {
    ensure_init();
}

#[cfg(target_family = "wasm")]
#[unsafe(export_name = "run")]
pub extern "C" fn run() {
    unsafe { __wasilibc_reset_preopens() };
    ensure_init();
    let mut request = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut request) {
        eprintln!("lattice-guest: cannot read request from stdin: {e}");
        return;
    }
    GUEST.with(|guest| {
        let guest = guest.get().expect("initialized");
        if let Some(envelope) = guest.interp.enter(|vm| guest.run(vm, request)) {
            unsafe { lattice_result(envelope.as_ptr(), envelope.len()) };
        }
    });
}

fn main() {
    // Unused: the host calls the `run` export. Kept so this is an ordinary wasip1 command.
}
