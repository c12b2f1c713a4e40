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

/// A README line that ends in `&`: started here, and waited for until its
/// port accepts connections.
fn start_in_background(line: &str, dir: &Path, path: &str, port: &str) -> Background {
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("lattice-wasm"), "{line}");
    let child = Command::new(env!("CARGO_BIN_EXE_lattice-wasm"))
        .args(words)
        .current_dir(dir)
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{line}: never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Background(child)
}

/// A README command's background process: killed if the test fails.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    // The README's service block starts `serve ... &` on 8080; here on a
    // free port instead, so the test cannot meet another server there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    // The lines as run here, in the README's order. Servers (`... &`) start
    // first; the other lines are independent of each other (the `curl`s
    // only need the server), so they run side by side and are checked in
    // order: the suite waits on the slowest line, not on their sum.
    let mut background = Vec::new();
    let mut foreground = Vec::new();
    for command in &commands {
        // Not run here: the test command itself (this test is part of it),
        // the release install, the same build `cargo run --release` is, and
        // the Python package's install, which the test command runs as
        // written (scripts/python-package.sh, into a fresh venv).
        if command == "./scripts/test.sh"
            || command.starts_with("cargo install ")
            || command == "pip install ./python"
        {
            continue;
        }
        let line = match command.strip_prefix("cargo run --release -- ") {
            Some(args) => format!("lattice-wasm {args}"),
            None => command.clone(),
        }
        .replace(":8080", &format!(":{port}"));
        assert!(
            line.contains("lattice-wasm ") || line.starts_with("curl -s localhost:"),
            "a README command this test does not know how to run: {command}"
        );
        match line.strip_suffix(" &") {
            Some(server) => {
                background.push(start_in_background(server, scratch.path(), &path, &port))
            }
            None => foreground.push((command, line)),
        }
    }
    let outputs: Vec<std::process::Output> = std::thread::scope(|scope| {
        let running: Vec<_> = foreground
            .iter()
            .map(|(_, line)| {
                let mut shell = Command::new("bash");
                shell
                    .args(["-o", "pipefail", "-c", line])
                    .current_dir(scratch.path())
                    .env("PATH", &path);
                if line.contains("--executor ray") {
                    let python = ray_python().expect(
                        "the README's Ray lines need the test cluster (scripts/ray-cluster.sh start)",
                    );
                    shell.env("LATTICE_RAY_PYTHON", python);
                }
                scope.spawn(move || shell.output().unwrap())
            })
            .collect();
        running.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut ran = background.len();
    for ((command, line), output) in foreground.iter().zip(outputs) {
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
        if line.starts_with("curl ") {
            // Each answer is JSON: the example batch's seven result lines
            // (three fail on purpose), else one answer that did not fail.
            let answers: Vec<serde_json::Value> = stdout
                .lines()
                .map(|answer| {
                    serde_json::from_str(answer)
                        .unwrap_or_else(|e| panic!("{command}: {e}: {stdout}"))
                })
                .collect();
            if line.contains("/v1/batch") {
                assert_eq!(answers.len(), 7, "{command}: {stdout}");
            } else {
                assert_eq!(answers.len(), 1, "{command}: {stdout}");
                assert_ne!(answers[0]["status"], "error", "{command}: {stdout}");
            }
        }
        ran += 1;
    }
    assert!(ran >= 10, "ran {ran} of {commands:?}");
    for mut server in background {
        // SAFETY: our child, not yet reaped.
        unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
        let status = server.0.wait().unwrap();
        assert_eq!(status.code(), Some(0), "serve after SIGTERM: {status:?}");
    }
    assert!(
        commands.contains(&"cargo run --release -- batch examples/tasks.jsonl".to_string()),
        "the README's main command is the example batch on the defaults: {commands:?}"
    );
    // The batch with --output wrote its seven result lines there.
    let results = std::fs::read_to_string(scratch.path().join("results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 7, "{results}");
}
