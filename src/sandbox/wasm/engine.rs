//! The one shared wasmtime `Engine`, its epoch ticker, the on-disk cache of
//! compiled modules, and the big-stack threads Wasm calls run on.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Module, ModuleVersionStrategy,
    PoolingAllocationConfig,
};

use super::host::TICK;
use crate::sandbox::OnceOk;
use crate::task::TaskError;

/// Deepest Wasm stack a task may use. RustPython raises RecursionError well
/// before it; a trap at this depth is still a typed error. Wasm runs on the
/// calling thread's stack, so tasks run on task threads
/// ([`crate::sandbox::on_task_thread`]), whose stack leaves room for it.
const MAX_WASM_STACK: usize = 8 << 20;
/// The version stamped on compiled code (wasmtime checks it on loading).
const COMPILED_CODE_VERSION: &str = "wasmtime-48.0.8+lattice-no-entry-epoch-check";
/// Instances that may live at once (the pooling allocator's slots).
pub(super) const POOL_SLOTS: u32 = 256;
/// Largest linear memory of a task (the pool reserves this per slot).
pub(super) const MAX_POOLED_MEMORY: usize = 1 << 30;

/// The shared engine, built once (with its epoch ticker).
pub(super) fn engine() -> Result<&'static Engine, TaskError> {
    static ENGINE: OnceOk<Engine> = OnceOk::new();
    ENGINE
        .get_or_try_init(|| {
            let engine = Engine::new(&config(true)).map_err(|e| format!("{e:#}"))?;
            let ticker = engine.weak();
            std::thread::Builder::new()
                .name("lattice-wasm-epoch".into())
                .spawn(move || {
                    while let Some(engine) = ticker.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(TICK);
                    }
                })
                .map_err(|e| format!("can't start the epoch ticker: {e}"))?;
            Ok(engine)
        })
        .map_err(|e: String| TaskError::unavailable(format!("can't create the Wasm engine: {e}")))
}

/// The part of a cache key that says which compiled code this engine
/// accepts: wasmtime's own hash of its version and compiler settings.
pub(super) fn engine_key(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The engine configuration: copy-on-write memory images, epoch
/// interruption (wall time, CPU time and cancel are checked every tick; fuel
/// would cost ~1.8x on loops), and, for task engines, the pooling allocator.
pub(super) fn config(pooling: bool) -> Config {
    let mut config = Config::new();
    config
        .memory_init_cow(true)
        .max_wasm_stack(MAX_WASM_STACK)
        // With the async feature compiled in (wasmtime-wasi needs it), the
        // engine refuses a Wasm stack larger than the async stack.
        .async_stack_size(MAX_WASM_STACK + (2 << 20))
        .epoch_interruption(pooling)
        .parallel_compilation(true);
    // Code compiled by the vendored Cranelift has no epoch check at function
    // entries, and is only safe under a host that interrupts through the
    // stack limit (host::watched): its own version keeps such code and
    // upstream's from being loaded by the other.
    config
        .module_version(ModuleVersionStrategy::Custom(COMPILED_CODE_VERSION.into()))
        .expect("the version is short and ASCII");
    if pooling {
        let mut pool = PoolingAllocationConfig::new();
        // A task that touches files has a second, memoryless instance (the
        // file budget's trampoline, see files.rs).
        pool.total_core_instances(2 * POOL_SLOTS)
            .total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .total_stacks(POOL_SLOTS)
            .table_elements(200_000)
            .max_memory_size(MAX_POOLED_MEMORY)
            .max_core_instance_size(16 << 20)
            // Resetting a slot by scanning which pages the task dirtied and
            // keeping them resident halves the page faults per task
            // (measured: ~267 -> ~139, 1.3-1.6 ms -> 0.95-1.1 ms).
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(32 << 20)
            .table_keep_resident(32 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Where compiled modules are cached: `$LATTICE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/lattice-wasm`, else `~/.cache/lattice-wasm`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LATTICE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("lattice-wasm")
}

/// Loads a compiled module from the cache if it is there and sound: ours
/// (owner and mode), the length its sidecar records, and accepted by
/// wasmtime (which checks its version and the engine configuration).
/// Anything else is reported and ignored, so the caller recompiles; but a
/// cache that can't be read right now (no fd or memory left) is an error,
/// so that a passing shortage costs neither a rebuild nor the tier.
pub(super) fn load_cached(engine: &Engine, path: &Path) -> Result<Option<Module>, TaskError> {
    let unreadable = |e: &std::io::Error| {
        TaskError::unavailable(format!(
            "can't read the compiled Wasm guest {}: {e}",
            path.display()
        ))
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(&e)),
    };
    // SAFETY: geteuid never fails.
    let euid = unsafe { libc::geteuid() };
    let complaint = if meta.uid() != euid || meta.mode() & 0o022 != 0 {
        Some("it is not private to this user".to_string())
    } else {
        match std::fs::read_to_string(sidecar(path)) {
            Ok(text) if text.trim() == meta.len().to_string() => None,
            Ok(_) => Some("its length does not match (truncated?)".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("its length record is missing".into())
            }
            Err(e) => return Err(unreadable(&e)),
        }
    };
    if let Some(complaint) = complaint {
        eprintln!(
            "lattice-wasm: ignoring the cached module {}: {complaint}",
            path.display()
        );
        return Ok(None);
    }
    // SAFETY: the file is ours, private, complete, and wasmtime checks that
    // it was compiled by this version for this engine configuration.
    match unsafe { Module::deserialize_file(engine, path) } {
        Ok(module) => Ok(Some(module)),
        Err(e) => {
            if let Some(io) = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()) {
                return Err(unreadable(io));
            }
            eprintln!(
                "lattice-wasm: ignoring the cached module {}: {e}",
                path.display()
            );
            Ok(None)
        }
    }
}

/// Writes a compiled module to the cache, atomically, private to this user.
pub(super) fn store_cached(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a cache path has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::write(sidecar(path), bytes.len().to_string())?;
    std::fs::rename(&temporary, path)
}

fn sidecar(path: &Path) -> PathBuf {
    path.with_extension("len")
}

/// Holds an exclusive lock on `path` (created if needed) while alive, so
/// that one process compiles while the others wait for its result.
pub(super) struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    pub(super) fn acquire(path: &Path) -> std::io::Result<FileLock> {
        use std::os::fd::AsRawFd;
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)?;
        // SAFETY: flock on a file we own; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileLock(file))
    }
}
