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
//! * export `session` — one call of a session (the instance is kept
//!   between calls): the request comes from the imports
//!   `lattice.request_len()` / `lattice.request_read(ptr)`, the envelope
//!   goes to `lattice.result`.

use std::cell::OnceCell;
use std::io::Read;

use lattice_guest::Guest;
#[cfg(target_family = "wasm")]
use rustpython_vm::signal::user_signal_channel;

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
    /// The length of the session request the host holds for this call.
    #[link_name = "request_len"]
    fn lattice_request_len() -> usize;
    /// Copies the session request into `ptr` (`request_len` bytes).
    #[link_name = "request_read"]
    fn lattice_request_read(ptr: *mut u8);
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
            let (sender, receiver) = user_signal_channel();
            // The traceback is on stderr already; the host reports the failure.
            let guest = lattice_guest::build(move |vm| vm.set_user_signal_channel(receiver))
                .unwrap_or_else(|_| std::process::abort());
            interrupt::prepare(&guest, sender);
            guest
        });
    });
}

/// How the host stops a session's call without stopping the instance:
/// RustPython checks one byte (its "eval breaker") before every bytecode
/// instruction and, when set, runs the closures queued on the VM's user
/// signal channel. The guest keeps one closure queued during a session
/// call; the host sets [`INTERRUPTED`] and the breaker byte in linear
/// memory (at the addresses [`interrupt_target`] gives), and the code gets
/// `KeyboardInterrupt` at its next instruction. (On wasm32 RustPython does
/// not check the breaker, nor say where it is: vendor/rustpython-vm is
/// patched for both.)
#[cfg(target_family = "wasm")]
mod interrupt {
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

    use lattice_guest::Guest;
    use rustpython_vm::signal::UserSignalSender;

    /// Set by the host when it stops the call.
    pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    /// A closure is queued on the signal channel.
    static ARMED: AtomicBool = AtomicBool::new(false);
    /// The addresses the host writes: the breaker byte and [`INTERRUPTED`]
    /// (0 until the guest is initialised).
    pub static mut TARGET: [u32; 2] = [0, 0];

    thread_local! {
        static SENDER: std::cell::OnceCell<UserSignalSender> = const { std::cell::OnceCell::new() };
    }

    /// Turns the VM's signal handling on (it checks its channel only with
    /// handlers installed) and keeps the channel's sender.
    pub fn prepare(guest: &Guest, sender: UserSignalSender) {
        guest.interp.enter(|vm| {
            let scope = vm.new_scope_with_builtins();
            let _ = vm.run_string(
                scope,
                "import _signal\n_signal.getsignal(2)\n",
                "<lattice_signal>",
            );
        });
        unsafe {
            TARGET = [
                rustpython_vm::signal::eval_breaker_ptr() as u32,
                &INTERRUPTED as *const AtomicBool as u32,
            ];
        }
        SENDER.with(|s| {
            let _ = s.set(sender);
        });
    }

    /// Before a session call: nothing stopped yet, and one closure queued
    /// that raises `KeyboardInterrupt` if the host stops the call.
    pub fn arm() {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let breaker = unsafe { TARGET[0] } as usize;
        if breaker == 0 {
            return;
        }
        if !ARMED.swap(true, Ordering::SeqCst) {
            SENDER.with(|sender| {
                let Some(sender) = sender.get() else { return };
                let _ = sender.send(Box::new(|vm| {
                    ARMED.store(false, Ordering::SeqCst);
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        return Err(vm.new_exception_msg(
                            vm.ctx.exceptions.keyboard_interrupt.to_owned(),
                            "lattice: the call was stopped".into(),
                        ));
                    }
                    Ok(())
                }));
            });
        }
        // Queued, not yet due: the host sets the breaker when it is (a
        // stop the host delivered after the last call ended is no stop of
        // this one).
        unsafe { AtomicU8::from_ptr(breaker as *mut u8) }.fetch_and(!1, Ordering::SeqCst);
    }
}

/// The addresses the host writes to stop a session's call (see `interrupt`).
#[cfg(target_family = "wasm")]
#[unsafe(export_name = "interrupt_target")]
pub extern "C" fn interrupt_target() -> *const u32 {
    ensure_init();
    &raw const interrupt::TARGET as *const u32
}

#[cfg(target_family = "wasm")]
#[unsafe(export_name = "wizer.initialize")]
pub extern "C" fn wizer_initialize() {
    ensure_init();
    GUEST.with(|guest| {
        let guest = guest.get().expect("initialised above");
        if let Err(exc) = guest.warm_up() {
            // The host reports the failed snapshot; the traceback says why.
            guest.interp.enter(|vm| vm.print_exception(&exc));
            std::process::abort();
        }
    });
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

/// One call of a session: the request comes from `lattice.request_read`
/// (the instance lives on between calls, its stdin is long spent), the
/// envelope goes back through `lattice.result` as in `run`.
#[cfg(target_family = "wasm")]
#[unsafe(export_name = "session")]
pub extern "C" fn session() {
    // The preopens are this instance's (its memory may be another's
    // restored, with that instance's table).
    unsafe { __wasilibc_reset_preopens() };
    ensure_init();
    interrupt::arm();
    let mut request = vec![0u8; unsafe { lattice_request_len() }];
    unsafe { lattice_request_read(request.as_mut_ptr()) };
    let request = String::from_utf8_lossy(&request).into_owned();
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
