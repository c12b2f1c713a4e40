//! Every shell command the README shows, run as written (with the binary
//! under test as `lattice-wasm`), from a scratch directory that has the
//! repository's `examples/`: a newcomer's first steps must work.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The lines of the README's `sh` blocks, without trailing comments.
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if in_sh && !line.trim().is_empty() {
            let command = match line.find("   #").or_else(|| line.find("  # ")) {
                Some(comment) => &line[..comment],
                None => line,
            };
            commands.push(command.trim().to_string());
        }
    }
    commands
}

/// The Ray cluster `scripts/ray-cluster.sh start` made: its Python.
fn ray_python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/ray-venv/bin/python");
    root.join("target/ray-cluster/cluster.env")
        .exists()
        .then_some(python)
}

#[test]
fn every_readme_command_runs_as_shown() {
    let _suite = crate::common::suite(module_path!());
    let commands = readme_commands();
    assert!(commands.len() >= 10, "{commands:?}");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_lattice-wasm"));
    let scratch = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        scratch.path().join("examples"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for command in &commands {
        // Not run here: the test command itself (this test is part of it),
        // and the release install, the same build `cargo run --release` is.
        if command == "./scripts/test.sh" || command.starts_with("cargo install ") {
            continue;
        }
        let line = match command.strip_prefix("cargo run --release -- ") {
            Some(args) => format!("lattice-wasm {args}"),
            None => command.clone(),
        };
        assert!(
            line.contains("lattice-wasm "),
            "a README command this test does not know how to run: {command}"
        );
        let mut shell = Command::new("bash");
        shell
            .args(["-o", "pipefail", "-c", &line])
            .current_dir(scratch.path())
            .env("PATH", &path);
        if line.contains("--executor ray") {
            let python = ray_python().expect(
                "the README's Ray lines need the test cluster (scripts/ray-cluster.sh start)",
            );
            shell.env("LATTICE_RAY_PYTHON", python);
        }
        let output = shell.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        // The README says the example batch exits 1: three tasks fail on
        // purpose, each with its own typed error.
        let expected = if line.contains("batch examples/tasks.jsonl") {
            assert!(
                stderr.contains(
                    "batch: 7 tasks, 4 ok, 3 failed (memory_limit 1, task_error 1, timeout 1)"
                ),
                "{command}: {stderr}"
            );
            1
        } else {
            0
        };
        assert_eq!(
            output.status.code(),
            Some(expected),
            "{command}\nstdout: {stdout}\nstderr: {stderr}"
        );
        ran += 1;
    }
    assert!(ran >= 10, "ran {ran} of {commands:?}");
    assert!(
        commands.contains(&"cargo run --release -- batch examples/tasks.jsonl".to_string()),
        "the README's main command is the example batch on the defaults: {commands:?}"
    );
    // The batch with --output wrote its seven result lines there.
    let results = std::fs::read_to_string(scratch.path().join("results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 7, "{results}");
}
