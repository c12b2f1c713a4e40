//! The Python guest: RustPython for wasm32-wasip1 (built from guest/ by
//! build.rs and embedded), pre-initialised once per machine with wasmtime's
//! Wizer, compiled once, and cached on disk.
//!
//! The snapshot is made on first use (or by `lattice-wasm doctor --warm`),
//! not at build time, so every machine — every cache — gets its own str
//! hash secret: RustPython draws it while initialising, and a snapshot
//! freezes it for every task started from that snapshot.

use std::future::Future;
use std::path::PathBuf;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use wasmtime::{Engine, InstancePre, Linker, Module, Store};

use super::code_cache::CodeCacheSlot;
use super::engine::{self, FileLock};
use super::host::{self, TaskState};
use crate::sandbox::{CancelToken, OnceOk, SandboxConfig};
use crate::task::TaskError;

/// The raw guest, as build.rs built it.
static GUEST_WASM: &[u8] = include_bytes!(env!("LATTICE_GUEST_PATH"));
/// The content hash of [`GUEST_WASM`] (build.rs).
pub(super) const GUEST_HASH: &str = env!("LATTICE_GUEST_HASH");

/// The guest, ready to instantiate.
pub(super) struct PythonGuest {
    pub pre: InstancePre<TaskState>,
}

/// The Python guest, loaded from the cache or prepared (~30 s, once).
pub(super) fn python() -> Result<&'static PythonGuest, TaskError> {
    static GUEST: OnceOk<PythonGuest> = OnceOk::new();
    GUEST.get_or_try_init(|| load().map_err(|e| TaskError::unavailable(e.to_string())))
}

/// The cache file of the compiled snapshot: keyed by the guest's hash and
/// by the engine's (wasmtime version and compiler settings).
pub fn cache_path() -> Result<PathBuf, TaskError> {
    let engine = engine::engine()?;
    Ok(engine::cache_dir().join(format!(
        "python-{GUEST_HASH}-{}.cwasm",
        engine::engine_key(engine)
    )))
}

fn load() -> Result<PythonGuest, TaskError> {
    let engine = engine::engine()?;
    let path = cache_path()?;
    let module = match engine::load_cached(engine, &path)? {
        Some(module) => module,
        None => {
            let _lock = FileLock::acquire(&path.with_extension("lock")).map_err(|e| {
                TaskError::unavailable(format!("can't lock the Wasm cache {}: {e}", path.display()))
            })?;
            // Another process may have built it while we waited.
            match engine::load_cached(engine, &path)? {
                Some(module) => module,
                None => prepare(engine, &path)?,
            }
        }
    };
    let mut linker = Linker::new(engine);
    host::add_imports(&mut linker).map_err(internal)?;
    let pre = linker.instantiate_pre(&module).map_err(internal)?;
    Ok(PythonGuest { pre })
}

/// Snapshots, compiles and caches the guest.
fn prepare(engine: &Engine, path: &std::path::Path) -> Result<Module, TaskError> {
    eprintln!(
        "lattice-wasm: preparing the Python sandbox (snapshot + compile, once per machine; ~30 s on 2 cores)..."
    );
    let started = Instant::now();
    let snapshot = crate::sandbox::on_task_thread(|| snapshot(GUEST_WASM))??;
    let module = Module::new(engine, &snapshot).map_err(internal)?;
    let bytes = module.serialize().map_err(internal)?;
    if let Err(e) = engine::store_cached(path, &bytes) {
        eprintln!(
            "lattice-wasm: can't cache the compiled guest at {}: {e} (it will be rebuilt next time)",
            path.display()
        );
    }
    remove_stale_guests(path);
    eprintln!(
        "lattice-wasm: Python sandbox ready in {:.1} s (cached at {})",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(module)
}

/// Removes the cached guests of other builds (a different guest or engine),
/// which would otherwise pile up at ~80 MB each. A process still using one
/// keeps its mapping; it would rebuild on its next start.
fn remove_stale_guests(current: &std::path::Path) {
    let (Some(dir), Some(stem)) = (current.parent(), current.file_stem()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let ours = path.file_stem() == Some(stem);
        let a_guest = name.starts_with("python-")
            && (name.ends_with(".cwasm") || name.ends_with(".len") || name.ends_with(".lock"));
        if a_guest && !ours {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Runs the guest's `wizer.initialize` (interpreter, driver, common stdlib
/// modules) and returns the module whose memory starts where it ended.
fn snapshot(raw: &[u8]) -> Result<Vec<u8>, TaskError> {
    // This module runs once, for the initialisation: Cranelift's fastest
    // compile, not its fastest code.
    let mut config = engine::config(false);
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let engine = Engine::new(&config).map_err(internal)?;
    let mut wizer = wasmtime_wizer::Wizer::new();
    wizer.init_func("wizer.initialize");
    let (context, instrumented) = wizer.instrument(raw).map_err(internal)?;
    let module = Module::new(&engine, &instrumented).map_err(internal)?;
    let mut linker = Linker::new(&engine);
    host::add_imports(&mut linker).map_err(internal)?;
    let config = SandboxConfig::default();
    let output = host::CappedOutput::new(1 << 20);
    let state = host::task_state(Vec::new(), &config, &output, &output)?;
    let mut store = Store::new(&engine, state);
    let instance = linker.instantiate(&mut store, &module).map_err(internal)?;
    let initialised = instance
        .get_typed_func::<(), ()>(&mut store, "wizer.initialize")
        .and_then(|init| init.call(&mut store, ()));
    if let Err(e) = initialised {
        let said = String::from_utf8_lossy(output.take().kept()).into_owned();
        return Err(TaskError::internal(format!(
            "the Python guest failed to initialise: {e:#}\n{said}"
        )));
    }
    let mut state = SnapshotSource {
        store: &mut store,
        instance,
    };
    block_on(wizer.snapshot(&context, &mut state)).map_err(internal)
}

/// What Wizer reads the snapshot from.
struct SnapshotSource<'a> {
    store: &'a mut Store<TaskState>,
    instance: wasmtime::Instance,
}

impl wasmtime_wizer::InstanceState for SnapshotSource<'_> {
    async fn global_get(
        &mut self,
        name: &str,
        _type: wasmtime_wizer::ValType,
    ) -> wasmtime_wizer::SnapshotVal {
        use wasmtime::Val;
        use wasmtime_wizer::SnapshotVal;
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("Wizer asks only for globals it exported");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => unreachable!("Wizer snapshots only numeric globals, got {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("Wizer asks only for memories it exported");
        contents(memory.data(&*self.store))
    }
}

/// Drives a future that never waits (Wizer's snapshot only awaits our
/// `InstanceState`, whose methods are immediate).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return value;
        }
        std::thread::yield_now();
    }
}

fn internal(e: impl std::fmt::Display) -> TaskError {
    TaskError::internal(format!("{e:#}"))
}

/// Runs one Python request in a fresh instance of the guest.
pub(super) fn run(
    request: &str,
    config: &SandboxConfig,
    cancel: &CancelToken,
    code_cache: CodeCacheSlot,
) -> Result<host::RunReport, TaskError> {
    let guest = python()?;
    host::run(
        &guest.pre,
        "run",
        request.as_bytes().to_vec(),
        config,
        cancel,
        code_cache,
    )
}
