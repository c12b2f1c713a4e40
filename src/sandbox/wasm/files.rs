//! What a Wasm task may do with the files of its mounts, on top of what
//! WASI preview 1 lets it (wasmtime-wasi already keeps it beneath its
//! mounts and read-only unless `:rw`):
//!
//! - at most [`MAX_OPEN_FILES`] descriptors open at once, and
//!   [`MAX_NEW_ENTRIES`] files and directories made;
//! - at most [`MAX_WRITTEN_BYTES`] written in all, and no file grown past
//!   [`MAX_FILE_BYTES`] (sparse or not): `EFBIG`, as the process tiers'
//!   RLIMIT_FSIZE gives;
//! - no symbolic links (one left in a host directory could later lead a
//!   host process astray): `EPERM`;
//! - only regular files and directories: a FIFO, device or socket that is
//!   in a mount is refused once opened (`EACCES`); an open that blocks (a
//!   FIFO without a writer) is woken at the task's limits (see
//!   `limits::Watch`), so no wait outlives them.
//!
//! These wrap the WASI functions of the guest's linker: each calls the
//! original. The originals find the guest's memory as the export `memory`
//! of the instance that calls them, so they are called through a small
//! trampoline instance (made once a task first touches a file) that
//! re-exports the guest's memory and forwards each call.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::{Caller, Engine, Extern, Func, Instance, Linker, Module, WasmParams, WasmResults};

use super::host::TaskState;

/// Descriptors a task may have open at once (the process tiers' RLIMIT_NOFILE).
pub(super) const MAX_OPEN_FILES: usize = 256;
/// Files and directories a task may make (the process tiers' tmpfs inodes).
pub(super) const MAX_NEW_ENTRIES: usize = 4096;
/// Bytes a task may write to its mounts in all.
pub(super) const MAX_WRITTEN_BYTES: u64 = 64 << 20;
/// The largest a task may make a file (the process tiers' RLIMIT_FSIZE).
pub(super) const MAX_FILE_BYTES: u64 = 64 << 20;

const MODULE: &str = "wasi_snapshot_preview1";

// WASI errno values.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_ACCES: i32 = 2;
const ERRNO_FBIG: i32 = 22;
const ERRNO_MFILE: i32 = 33;
const ERRNO_NOSPC: i32 = 51;
const ERRNO_PERM: i32 = 63;
/// `oflags::creat` of `path_open`.
const OFLAGS_CREAT: i32 = 1;
/// `filetype` values of a filestat.
const FILETYPE_DIRECTORY: u8 = 3;
const FILETYPE_REGULAR_FILE: u8 = 4;
/// A filestat is 64 bytes: its type at 16, its size at 32.
const FILESTAT_BYTES: usize = 64;

/// One task's use of its files.
#[derive(Default)]
pub(super) struct FileBudget {
    /// Descriptors opened by `path_open` and still open: true for files.
    open: HashMap<i32, bool>,
    written: u64,
    made: usize,
    /// The original WASI functions, through the trampoline.
    originals: HashMap<&'static str, Func>,
}

/// The WASI functions the budget wraps or asks, with their parameters.
const FORWARDED: [(&str, &[&str]); 10] = [
    (
        "path_open",
        &[
            "i32", "i32", "i32", "i32", "i32", "i64", "i64", "i32", "i32",
        ],
    ),
    ("fd_close", &["i32"]),
    ("fd_renumber", &["i32", "i32"]),
    ("path_create_directory", &["i32", "i32", "i32"]),
    (
        "path_link",
        &["i32", "i32", "i32", "i32", "i32", "i32", "i32"],
    ),
    ("fd_write", &["i32", "i32", "i32", "i32"]),
    ("fd_pwrite", &["i32", "i32", "i32", "i64", "i32"]),
    ("fd_filestat_set_size", &["i32", "i64"]),
    ("fd_filestat_get", &["i32", "i32"]),
    ("fd_tell", &["i32", "i32"]),
];

/// The trampoline: imports the guest's memory and the originals, exports
/// the memory and a forwarder for each.
fn trampoline_text() -> String {
    let mut text = String::from("(module (import \"env\" \"memory\" (memory 0))\n");
    for (name, params) in FORWARDED {
        text.push_str(&format!(
            "(import \"wasi\" \"{name}\" (func ${name} (param {}) (result i32)))\n",
            params.join(" ")
        ));
    }
    text.push_str("(export \"memory\" (memory 0))\n");
    for (name, params) in FORWARDED {
        let gets: Vec<String> = (0..params.len())
            .map(|i| format!("local.get {i}"))
            .collect();
        text.push_str(&format!(
            "(func (export \"{name}\") (param {}) (result i32) {} call ${name})\n",
            params.join(" "),
            gets.join(" ")
        ));
    }
    text.push(')');
    text
}

/// The trampoline module, compiled once for the engine of `caller`.
fn trampoline(caller: &Caller<'_, TaskState>) -> wasmtime::Result<Module> {
    static MODULE: std::sync::Mutex<Option<Module>> = std::sync::Mutex::new(None);
    let mut kept = MODULE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(module) = kept
        .as_ref()
        .filter(|m| Engine::same(m.engine(), caller.engine()))
    {
        return Ok(module.clone());
    }
    let module = Module::new(caller.engine(), trampoline_text())?;
    *kept = Some(module.clone());
    Ok(module)
}

/// The originals of this task, through a trampoline made for it.
fn fetch_originals(
    wasi: &Linker<TaskState>,
    caller: &mut Caller<'_, TaskState>,
) -> wasmtime::Result<HashMap<&'static str, Func>> {
    let module = trampoline(caller)?;
    let memory =
        memory(caller).ok_or_else(|| wasmtime::format_err!("the guest exports no memory"))?;
    let mut imports = vec![Extern::Memory(memory)];
    for (name, _) in FORWARDED {
        imports.push(wasi.get(&mut *caller, MODULE, name)?);
    }
    let instance = Instance::new(&mut *caller, &module, &imports)?;
    FORWARDED
        .iter()
        .map(|(name, _)| {
            instance
                .get_func(&mut *caller, name)
                .map(|func| (*name, func))
                .ok_or_else(|| wasmtime::format_err!("the trampoline lacks {name}"))
        })
        .collect()
}

/// Replaces the WASI functions that open, make and write files with the
/// budgeted ones above. `linker` must already have WASI.
pub(super) fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    let mut wasi = Linker::new(linker.engine());
    wasmtime_wasi::p1::add_to_linker_sync(&mut wasi, |state: &mut TaskState| state.wasi())?;
    let wasi = Arc::new(wasi);
    linker.allow_shadowing(true);

    let originals = wasi.clone();
    linker.func_wrap(
        MODULE,
        "path_open",
        move |mut caller: Caller<'_, TaskState>,
              dir: i32,
              dirflags: i32,
              path: i32,
              path_len: i32,
              oflags: i32,
              rights: i64,
              inheriting: i64,
              fdflags: i32,
              opened: i32|
              -> wasmtime::Result<i32> {
            let budget = caller.data_mut().files();
            if budget.open.len() >= MAX_OPEN_FILES {
                return Ok(ERRNO_MFILE);
            }
            let creates = oflags & OFLAGS_CREAT != 0;
            if creates && budget.made >= MAX_NEW_ENTRIES {
                return Ok(ERRNO_NOSPC);
            }
            let errno: i32 = call(
                &originals,
                &mut caller,
                "path_open",
                (
                    dir, dirflags, path, path_len, oflags, rights, inheriting, fdflags, opened,
                ),
            )?;
            if errno != ERRNO_SUCCESS {
                return Ok(errno);
            }
            let Some(fd) = read_u32(&mut caller, opened).map(|fd| fd as i32) else {
                return Ok(errno);
            };
            let kind = filetype(&originals, &mut caller, fd)?;
            if kind != Some(FILETYPE_REGULAR_FILE) && kind != Some(FILETYPE_DIRECTORY) {
                let _: i32 = call(&originals, &mut caller, "fd_close", fd)?;
                return Ok(ERRNO_ACCES);
            }
            let budget = caller.data_mut().files();
            budget.open.insert(fd, kind == Some(FILETYPE_REGULAR_FILE));
            if creates {
                budget.made += 1;
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;

    let originals = wasi.clone();
    linker.func_wrap(
        MODULE,
        "fd_close",
        move |mut caller: Caller<'_, TaskState>, fd: i32| -> wasmtime::Result<i32> {
            let errno: i32 = call(&originals, &mut caller, "fd_close", fd)?;
            if errno == ERRNO_SUCCESS {
                caller.data_mut().files().open.remove(&fd);
            }
            Ok(errno)
        },
    )?;

    let originals = wasi.clone();
    linker.func_wrap(
        MODULE,
        "fd_renumber",
        move |mut caller: Caller<'_, TaskState>, from: i32, to: i32| -> wasmtime::Result<i32> {
            let errno: i32 = call(&originals, &mut caller, "fd_renumber", (from, to))?;
            if errno == ERRNO_SUCCESS {
                let budget = caller.data_mut().files();
                budget.open.remove(&to);
                if let Some(is_file) = budget.open.remove(&from) {
                    budget.open.insert(to, is_file);
                }
            }
            Ok(errno)
        },
    )?;

    let originals = wasi.clone();
    linker.func_wrap(
        MODULE,
        "path_create_directory",
        move |mut caller: Caller<'_, TaskState>, dir: i32, path: i32, len: i32| {
            if caller.data_mut().files().made >= MAX_NEW_ENTRIES {
                return Ok(ERRNO_NOSPC);
            }
            let errno: i32 = call(
                &originals,
                &mut caller,
                "path_create_directory",
                (dir, path, len),
            )?;
            if errno == ERRNO_SUCCESS {
                caller.data_mut().files().made += 1;
            }
            Ok(errno)
        },
    )?;

    let originals = wasi.clone();
    linker.func_wrap(
        MODULE,
        "path_link",
        move |mut caller: Caller<'_, TaskState>,
              old_dir: i32,
              flags: i32,
              old: i32,
              old_len: i32,
              new_dir: i32,
              new: i32,
              new_len: i32| {
            if caller.data_mut().files().made >= MAX_NEW_ENTRIES {
                return Ok(ERRNO_NOSPC);
            }
            let errno: i32 = call(
                &originals,
                &mut caller,
                "path_link",
                (old_dir, flags, old, old_len, new_dir, new, new_len),
            )?;
            if errno == ERRNO_SUCCESS {
                caller.data_mut().files().made += 1;
            }
            Ok(errno)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "path_symlink",
        |_: Caller<'_, TaskState>, _: i32, _: i32, _: i32, _: i32, _: i32| Ok(ERRNO_PERM),
    )?;

    let originals = wasi.clone();
    linker.func_wrap(
        MODULE,
        "fd_write",
        move |mut caller: Caller<'_, TaskState>, fd: i32, iovs: i32, count: i32, written: i32| {
            if !is_file(&mut caller, fd) {
                return call(
                    &originals,
                    &mut caller,
                    "fd_write",
                    (fd, iovs, count, written),
                );
            }
            let len = first_buffer_len(&mut caller, iovs, count);
            let position: Option<u64> = tell(&originals, &mut caller, fd)?;
            let size = file_size(&originals, &mut caller, fd)?;
            let end = position
                .unwrap_or(0)
                .saturating_add(len)
                .max(size.unwrap_or(0));
            if let Some(errno) = over_budget(&mut caller, len, end) {
                return Ok(errno);
            }
            let errno: i32 = call(
                &originals,
                &mut caller,
                "fd_write",
                (fd, iovs, count, written),
            )?;
            count_written(&mut caller, errno, written);
            Ok(errno)
        },
    )?;

    let originals = wasi.clone();
    linker.func_wrap(
        MODULE,
        "fd_pwrite",
        move |mut caller: Caller<'_, TaskState>,
              fd: i32,
              iovs: i32,
              count: i32,
              offset: i64,
              written: i32| {
            if is_file(&mut caller, fd) {
                let len = first_buffer_len(&mut caller, iovs, count);
                if let Some(errno) =
                    over_budget(&mut caller, len, (offset as u64).saturating_add(len))
                {
                    return Ok(errno);
                }
            }
            let errno: i32 = call(
                &originals,
                &mut caller,
                "fd_pwrite",
                (fd, iovs, count, offset, written),
            )?;
            count_written(&mut caller, errno, written);
            Ok(errno)
        },
    )?;

    let originals = wasi;
    linker.func_wrap(
        MODULE,
        "fd_filestat_set_size",
        move |mut caller: Caller<'_, TaskState>, fd: i32, size: i64| {
            if size as u64 > MAX_FILE_BYTES {
                return Ok(ERRNO_FBIG);
            }
            call(&originals, &mut caller, "fd_filestat_set_size", (fd, size))
        },
    )?;

    linker.allow_shadowing(false);
    Ok(())
}

/// Calls the original WASI function `name`.
fn call<P: WasmParams, R: WasmResults>(
    originals: &Linker<TaskState>,
    caller: &mut Caller<'_, TaskState>,
    name: &'static str,
    params: P,
) -> wasmtime::Result<R> {
    if caller.data_mut().files().originals.is_empty() {
        let fetched = fetch_originals(originals, caller)?;
        caller.data_mut().files().originals = fetched;
    }
    let func = caller
        .data_mut()
        .files()
        .originals
        .get(name)
        .copied()
        .ok_or_else(|| wasmtime::format_err!("no original for {name}"))?;
    func.typed::<P, R>(&*caller)?.call(&mut *caller, params)
}

fn memory(caller: &mut Caller<'_, TaskState>) -> Option<wasmtime::Memory> {
    caller.get_export("memory").and_then(Extern::into_memory)
}

fn read_u32(caller: &mut Caller<'_, TaskState>, at: i32) -> Option<u32> {
    let memory = memory(caller)?;
    let at = at as u32 as usize;
    let bytes = memory.data(&*caller).get(at..at + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn is_file(caller: &mut Caller<'_, TaskState>, fd: i32) -> bool {
    caller.data_mut().files().open.get(&fd) == Some(&true)
}

/// The length of the first non-empty buffer of an iovec array: what one
/// WASI write writes.
fn first_buffer_len(caller: &mut Caller<'_, TaskState>, iovs: i32, count: i32) -> u64 {
    (0..count.clamp(0, 1024))
        .filter_map(|i| read_u32(caller, iovs.wrapping_add(i * 8 + 4)))
        .find(|&len| len > 0)
        .map_or(0, u64::from)
}

/// The errno that refuses a write of `len` bytes ending at `end`, if one does.
fn over_budget(caller: &mut Caller<'_, TaskState>, len: u64, end: u64) -> Option<i32> {
    let budget = caller.data_mut().files();
    (end > MAX_FILE_BYTES || budget.written.saturating_add(len) > MAX_WRITTEN_BYTES)
        .then_some(ERRNO_FBIG)
}

fn count_written(caller: &mut Caller<'_, TaskState>, errno: i32, written: i32) {
    if errno == ERRNO_SUCCESS {
        let n = read_u32(caller, written).unwrap_or(0);
        let budget = caller.data_mut().files();
        budget.written = budget.written.saturating_add(u64::from(n));
    }
}

/// Runs `with(scratch)` with `len` bytes of the guest's memory to write an
/// answer into, and puts those bytes back after: the originals write their
/// answers into guest memory, and the host must leave it as it was. The
/// guest is not running meanwhile.
fn with_scratch<T>(
    caller: &mut Caller<'_, TaskState>,
    len: usize,
    with: impl FnOnce(&mut Caller<'_, TaskState>, i32) -> wasmtime::Result<Option<T>>,
) -> wasmtime::Result<Option<T>> {
    let Some(memory) = memory(caller) else {
        return Ok(None);
    };
    let Some(saved) = memory.data(&*caller).get(..len).map(<[u8]>::to_vec) else {
        return Ok(None);
    };
    let answer = with(caller, 0);
    memory.data_mut(&mut *caller)[..len].copy_from_slice(&saved);
    answer
}

fn filestat(
    originals: &Linker<TaskState>,
    caller: &mut Caller<'_, TaskState>,
    fd: i32,
) -> wasmtime::Result<Option<[u8; FILESTAT_BYTES]>> {
    with_scratch(caller, FILESTAT_BYTES, |caller, at| {
        let errno: i32 = call(originals, caller, "fd_filestat_get", (fd, at))?;
        if errno != ERRNO_SUCCESS {
            return Ok(None);
        }
        let memory = memory(caller).expect("checked by with_scratch");
        let mut stat = [0u8; FILESTAT_BYTES];
        stat.copy_from_slice(&memory.data(&*caller)[..FILESTAT_BYTES]);
        Ok(Some(stat))
    })
}

fn filetype(
    originals: &Linker<TaskState>,
    caller: &mut Caller<'_, TaskState>,
    fd: i32,
) -> wasmtime::Result<Option<u8>> {
    Ok(filestat(originals, caller, fd)?.map(|stat| stat[16]))
}

fn file_size(
    originals: &Linker<TaskState>,
    caller: &mut Caller<'_, TaskState>,
    fd: i32,
) -> wasmtime::Result<Option<u64>> {
    Ok(filestat(originals, caller, fd)?
        .map(|stat| u64::from_le_bytes(stat[32..40].try_into().expect("8 bytes"))))
}

fn tell(
    originals: &Linker<TaskState>,
    caller: &mut Caller<'_, TaskState>,
    fd: i32,
) -> wasmtime::Result<Option<u64>> {
    with_scratch(caller, 8, |caller, at| {
        let errno: i32 = call(originals, caller, "fd_tell", (fd, at))?;
        if errno != ERRNO_SUCCESS {
            return Ok(None);
        }
        let memory = memory(caller).expect("checked by with_scratch");
        Ok(Some(u64::from_le_bytes(
            memory.data(&*caller)[..8].try_into().expect("8 bytes"),
        )))
    })
}
