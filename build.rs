//! Builds the RustPython WASI guest (guest/) for wasm32-wasip1 and hands its
//! path and content hash to the crate, which embeds it.
//!
//! The guest is its own cargo workspace, built into `<target>/guest` (a
//! separate target dir, so the nested cargo never waits on our own lock).
//! Cargo's freshness check means an unchanged guest is not rebuilt. The
//! `wasm32-wasip1` target is installed with rustup when missing.
//! `LATTICE_GUEST_WASM=/path/to/lattice-guest.wasm` skips the build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "guest/Cargo.lock",
        "src/runner/driver.py",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=LATTICE_GUEST_WASM");
    let wasm = match env::var_os("LATTICE_GUEST_WASM") {
        Some(path) => PathBuf::from(path),
        None => build_guest(),
    };
    let bytes = std::fs::read(&wasm)
        .unwrap_or_else(|e| panic!("can't read the guest {}: {e}", wasm.display()));
    println!("cargo:rustc-env=LATTICE_GUEST_WASM_PATH={}", wasm.display());
    println!("cargo:rustc-env=LATTICE_GUEST_HASH={:016x}", fnv1a(&bytes));
}

fn build_guest() -> PathBuf {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest");
    ensure_wasm_target();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--ignore-rust-version"])
        .args(["--target", "wasm32-wasip1"])
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
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("can't run cargo to build the guest: {e}"));
    if !status.success() {
        panic!("building the RustPython guest (guest/) for wasm32-wasip1 failed: {status}");
    }
    target_dir.join("wasm32-wasip1/release/lattice-guest.wasm")
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
