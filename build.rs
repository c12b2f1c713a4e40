//! Builds the RustPython guest (guest/) twice and hands the paths and
//! content hashes to the crate, which embeds both: for wasm32-wasip1 (the
//! wasm tier's guest) and as a native shared library (the none tier's
//! in-process Python).
//!
//! The guest is its own cargo workspace, built into `<target>/guest` (a
//! separate target dir, so the nested cargo never waits on our own lock).
//! Cargo's freshness check means an unchanged guest is not rebuilt. The
//! `wasm32-wasip1` target is installed with rustup when missing.
//! `LATTICE_GUEST_WASM=/path/to/lattice-guest.wasm` and
//! `LATTICE_NATIVE_PYTHON=/path/to/liblattice_guest.so` skip the builds.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "guest/Cargo.lock",
        "vendor/rustpython-vm",
        "vendor/rustpython-common",
        "src/sandbox/driver.py",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=LATTICE_GUEST_WASM");
    println!("cargo:rerun-if-env-changed=LATTICE_NATIVE_PYTHON");
    let wasm = match env::var_os("LATTICE_GUEST_WASM") {
        Some(path) => PathBuf::from(path),
        None => {
            ensure_wasm_target();
            build_guest(
                "wasm32-wasip1",
                &["build", "--bin", "lattice-guest"],
                "lattice-guest.wasm",
            )
        }
    };
    export("LATTICE_GUEST", &wasm);
    let host = env::var("TARGET").expect("cargo sets TARGET");
    let native = match env::var_os("LATTICE_NATIVE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => build_guest(
            &host,
            &["rustc", "--lib", "--crate-type", "cdylib"],
            "liblattice_guest.so",
        ),
    };
    export("LATTICE_NATIVE_PYTHON", &native);
}

/// Tells the crate where `artifact` is (`<NAME>_PATH`) and its content hash
/// (`<NAME>_HASH`).
fn export(name: &str, artifact: &Path) {
    let bytes = std::fs::read(artifact)
        .unwrap_or_else(|e| panic!("can't read {}: {e}", artifact.display()));
    println!("cargo:rustc-env={name}_PATH={}", artifact.display());
    println!("cargo:rustc-env={name}_HASH={:016x}", fnv1a(&bytes));
}

/// Runs `cargo <how>` on the guest for `target` and returns `artifact`.
fn build_guest(target: &str, how: &[&str], artifact: &str) -> PathBuf {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(how)
        .args(["--release", "--locked", "--ignore-rust-version"])
        .args(["--target", target])
        .arg("--manifest-path")
        .arg(root.join("guest/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are not the guest's.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS")
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
            || key == "RUSTC_WORKSPACE_WRAPPER"
        {
            command.env_remove(key.as_ref());
        }
    }
    if target == "wasm32-wasip1" {
        // Wasm SIMD (which wasmtime compiles to SSE/AVX): memchr and its
        // kin in RustPython's string paths use it when it is enabled at
        // compile time.
        command.env(
            "CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS",
            "-C target-feature=+simd128",
        );
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("can't run cargo to build the guest: {e}"));
    if !status.success() {
        panic!("building the RustPython guest (guest/) for {target} failed: {status}");
    }
    target_dir.join(target).join("release").join(artifact)
}

fn ensure_wasm_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-wasip1")
        })
        .unwrap_or(false);
    if !installed {
        let status = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip1"])
            .status();
        if !matches!(status, Ok(s) if s.success()) && !sysroot_has_wasm_target() {
            panic!(
                "the wasm32-wasip1 target is missing and `rustup target add wasm32-wasip1` failed"
            );
        }
    }
}

fn sysroot_has_wasm_target() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string()))
        .is_some_and(|sysroot| {
            Path::new(&sysroot)
                .join("lib/rustlib/wasm32-wasip1")
                .is_dir()
        })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
