//! The compiled-guest cache: used as is when good, private, never trusted
//! blindly (a truncated or corrupted file is rebuilt, and another build's
//! file is removed then), and each snapshot has its own str hash secret.
//! (Made on first use: `doctor --warm` makes the one these tests copy.)

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

fn exec_in(cache: &Path, task: &str) -> Output {
    crate::common::lattice_cli(&["exec"], task, &[("LATTICE_CACHE_DIR", cache)])
}

fn hash_of_abc(cache: &Path) -> (Value, String) {
    let out = exec_in(
        cache,
        r#"{"tier": "wasm", "code": "def f(x):\n    return [hash('abc'), hash(x)]", "input": "xyz"}"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    (result["result"].clone(), stderr)
}

fn cached_module(cache: &Path) -> PathBuf {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a compiled guest in the cache")
}

/// The machine's compiled guest, made now if it is missing (`doctor
/// --warm` says where it is).
fn warm_module() -> PathBuf {
    let out = crate::common::lattice_cli(&["doctor", "--warm"], "", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let path = stderr
        .lines()
        .find_map(|l| l.strip_prefix("wasm tier ready in ")?.split_once(": "))
        .map(|(_, path)| PathBuf::from(path.trim()))
        .unwrap_or_else(|| panic!("doctor --warm named no compiled guest: {stderr}"));
    assert!(path.is_file(), "{}", path.display());
    path
}

/// A cache dir holding a copy of `module` (and its length record), so a
/// test pays only for the rebuilds it is about.
fn cache_with(module: &Path) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    for file in [module.to_path_buf(), module.with_extension("len")] {
        std::fs::copy(&file, cache.path().join(file.file_name().unwrap()))
            .unwrap_or_else(|e| panic!("can't copy the cached guest's {}: {e}", file.display()));
    }
    cache
}

#[test]
fn bad_cache_files_are_rebuilt_and_each_snapshot_has_its_own_hash_secret() {
    let _suite = crate::common::suite(module_path!());
    let warm = warm_module();

    // A good cached guest is used as is, and within one snapshot the hash
    // is stable (that is what a snapshot is).
    let cache = cache_with(&warm);
    let module = cached_module(cache.path());
    let (first, stderr) = hash_of_abc(cache.path());
    assert!(!stderr.contains("preparing"), "{stderr}");
    let (again, stderr) = hash_of_abc(cache.path());
    assert_eq!(again, first);
    assert!(!stderr.contains("preparing"), "{stderr}");

    // Truncated: noticed by its length, rebuilt, with a new hash secret. A
    // guest compiled by another build is replaced then, not kept beside
    // ours, and the new file is private.
    let stale = cache
        .path()
        .join("python-0000000000000000-0000000000000000.cwasm");
    std::fs::write(&stale, b"stale").unwrap();
    let length = std::fs::metadata(&module).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&module)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let (rebuilt, stderr) = hash_of_abc(cache.path());
    assert!(stderr.contains("ignoring the cached module"), "{stderr}");
    assert!(stderr.contains("preparing the Python sandbox"), "{stderr}");
    assert_ne!(
        rebuilt[0], first[0],
        "two snapshots share a str hash secret"
    );
    assert!(
        !stale.exists(),
        "a stale compiled guest was left in the cache"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&module).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the cache file is readable by others");

    // Same length, garbage inside: wasmtime refuses it, and it is rebuilt.
    let cache = cache_with(&warm);
    let module = cached_module(cache.path());
    let length = std::fs::metadata(&module).unwrap().len() as usize;
    std::fs::write(&module, vec![0x5a; length]).unwrap();
    let (_, stderr) = hash_of_abc(cache.path());
    assert!(stderr.contains("ignoring the cached module"), "{stderr}");
    assert!(stderr.contains("preparing the Python sandbox"), "{stderr}");
}
