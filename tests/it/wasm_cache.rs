//! The compiled-guest cache: made on first use, private, never trusted
//! blindly (a truncated or corrupted file is rebuilt), and each snapshot has
//! its own str hash secret.

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

#[test]
fn bad_cache_files_are_rebuilt_and_each_snapshot_has_its_own_hash_secret() {
    let _suite = crate::common::suite(module_path!());
    let cache = tempfile::tempdir().unwrap();
    // A guest compiled by another build: replaced, not kept beside ours.
    let stale = cache
        .path()
        .join("python-0000000000000000-0000000000000000.cwasm");
    std::fs::write(&stale, b"stale").unwrap();
    let (first, stderr) = hash_of_abc(cache.path());
    assert!(
        !stale.exists(),
        "a stale compiled guest was left in the cache"
    );
    assert!(stderr.contains("preparing the Python sandbox"), "{stderr}");
    let module = cached_module(cache.path());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&module).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the cache file is readable by others");

    // Within one snapshot the hash is stable (that is what a snapshot is).
    let (again, stderr) = hash_of_abc(cache.path());
    assert_eq!(again, first);
    assert!(!stderr.contains("preparing"), "{stderr}");

    // Truncated: noticed by its length, rebuilt, with a new hash secret.
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

    // Same length, garbage inside: wasmtime refuses it, and it is rebuilt.
    let length = std::fs::metadata(&module).unwrap().len() as usize;
    std::fs::write(&module, vec![0x5a; length]).unwrap();
    let (_, stderr) = hash_of_abc(cache.path());
    assert!(stderr.contains("ignoring the cached module"), "{stderr}");
    assert!(stderr.contains("preparing the Python sandbox"), "{stderr}");
}
