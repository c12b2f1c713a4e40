//! The `lattice-wasm` binary, run as a user would.

use std::process::Output;

use serde_json::{json, Value};

fn lattice(args: &[&str], stdin: &str) -> Output {
    crate::common::lattice_cli(args, stdin, &[])
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn run_prints_one_result_and_exits_by_outcome() {
    let _suite = crate::common::suite(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let ok = write(
        &dir,
        "ok.py",
        "def helper(x):\n    return x + 1\ndef main(x):\n    print('side')\n    return helper(x)\n",
    );
    let out = lattice(&["run", &ok, "--tier", "subprocess", "--input", "41"], "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = &lines(&out)[0];
    assert_eq!(result["result"], json!(42));
    assert_eq!(result["stdout"], json!("side\n"));
    assert_eq!(result["tier"], json!("subprocess"));

    let raising = write(&dir, "raise.py", "def f(x):\n    raise KeyError(x)\n");
    let out = lattice(
        &["run", &raising, "--tier", "subprocess", "--input", "\"k\""],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(lines(&out)[0]["error"]["type"], json!("KeyError"));

    let syntax = write(&dir, "syntax.py", "def f(x)\n    return x\n");
    let out = lattice(
        &["run", &syntax, "--tier", "subprocess", "--input", "1"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(lines(&out)[0]["error"]["kind"], json!("invalid_task"));

    let out = lattice(&["run", &ok, "--input", "{not json"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--input is not valid JSON"));
}

#[test]
fn run_takes_code_on_stdin_and_args_kwargs_entry_and_limits() {
    let _suite = crate::common::suite(module_path!());
    let out = lattice(
        &[
            "run",
            "-",
            "--tier",
            "subprocess",
            "--entry",
            "g",
            "--args",
            "[2]",
            "--kwargs",
            "{\"k\": 5}",
        ],
        "def g(a, k=0):\n    return a * k\ndef h():\n    return 0\n",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out)[0]["result"], json!(10));

    let out = lattice(
        &["run", "-", "--tier", "subprocess", "--timeout", "0.5"],
        "def f():\n    while True: pass\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(lines(&out)[0]["error"]["kind"], json!("timeout"));

    let out = lattice(
        &["run", "-", "--tier", "subprocess", "--allow-import", "json"],
        "import os\ndef f():\n    return 1\n",
    );
    assert_eq!(lines(&out)[0]["error"]["type"], json!("ImportError"));
}

#[test]
fn batch_gives_one_line_per_task_in_order_and_goes_on_after_bad_lines() {
    let _suite = crate::common::suite(module_path!());
    let tasks = [
        r#"{"id": "a", "code": "def f(x):\n    return x * 2", "input": 21}"#,
        r#"{"code": "def f(x):\n    return x", "input": 1267650600228229401496703205376}"#,
        "this is not json",
        "",
        r#"{"id": "slow", "code": "import time\ndef f(x):\n    time.sleep(5)", "input": 0, "timeout_s": 0.5}"#,
        r#"{"id": "bad-field", "code": "def f(): return 1", "colour": "red"}"#,
        r#"{"id": "boom", "code": "def f(x):\n    raise ValueError('no')", "input": 0}"#,
    ]
    .join("\n");
    let out = lattice(
        &["batch", "-", "--tier", "subprocess", "--concurrency", "2"],
        &tasks,
    );
    // An invalid_task result outranks a failed task: exit 2.
    assert_eq!(out.status.code(), Some(2));
    let results = lines(&out);
    assert_eq!(results.len(), 6);
    assert_eq!(results[0]["id"], json!("a"));
    assert_eq!(results[0]["result"], json!(42), "{}", results[0]);
    assert_eq!(results[1]["id"], json!(2));
    assert_eq!(
        results[1]["result"].to_string(),
        "1267650600228229401496703205376"
    );
    assert_eq!(results[2]["id"], json!(3));
    assert_eq!(results[2]["error"]["kind"], json!("invalid_task"));
    assert_eq!(results[3]["id"], json!("slow"));
    assert_eq!(results[3]["error"]["kind"], json!("timeout"));
    assert_eq!(results[4]["error"]["kind"], json!("invalid_task"));
    assert!(results[4]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("colour"));
    assert_eq!(results[5]["error"]["type"], json!("ValueError"));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("6 tasks, 2 ok, 4 failed"), "{summary}");
    assert!(summary.contains("invalid_task 2"), "{summary}");
}

#[test]
fn batch_writes_to_an_output_file() {
    let _suite = crate::common::suite(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        &dir,
        "tasks.jsonl",
        "{\"code\": \"def f(x):\\n    return x\", \"input\": 1}\n",
    );
    let output = dir.path().join("out.jsonl");
    let out = lattice(
        &[
            "batch",
            &input,
            "--tier",
            "subprocess",
            "--output",
            output.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(output).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text.trim()).unwrap()["result"],
        json!(1)
    );
}

#[test]
fn exec_reads_one_task_and_prints_one_result() {
    let _suite = crate::common::suite(module_path!());
    let out = lattice(
        &["exec"],
        r#"{"id": 9, "tier": "subprocess", "code": "def f(x):\n    return sorted(x)", "input": [3, 1, 2]}"#,
    );
    assert_eq!(out.status.code(), Some(0));
    let result = &lines(&out)[0];
    assert_eq!(
        (result["id"].clone(), result["result"].clone()),
        (json!(9), json!([1, 2, 3]))
    );
    let out = lattice(&["exec"], r#"{"code": "def f(): pass", "extra": 1}"#);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(lines(&out)[0]["error"]["kind"], json!("invalid_task"));
}

#[test]
fn resources_and_doctor_report() {
    let _suite = crate::common::suite(module_path!());
    let out = lattice(&["resources"], "");
    assert_eq!(out.status.code(), Some(0));
    let resources: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resources["nodes"][0]["node_id"], json!("local"));

    let out = lattice(&["doctor", "--json"], "");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["subprocess"]["available"], json!(true));
    for tier in ["none", "wasm", "subprocess", "seccomp", "docker"] {
        let available = report[tier]["available"].as_bool().unwrap();
        assert!(available || !report[tier]["reason"].as_str().unwrap().is_empty());
    }
}

#[test]
fn every_command_has_help_and_bad_usage_exits_2() {
    let _suite = crate::common::suite(module_path!());
    for command in ["run", "batch", "exec", "resources", "doctor"] {
        let out = lattice(&[command, "--help"], "");
        assert_eq!(out.status.code(), Some(0), "{command}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
    assert_eq!(lattice(&["run"], "").status.code(), Some(2));
    assert_eq!(
        lattice(&["run", "/nonexistent.py"], "").status.code(),
        Some(2)
    );
    assert_eq!(
        lattice(&["batch", "-", "--tier", "jail"], "").status.code(),
        Some(2)
    );
    assert_eq!(lattice(&["frobnicate"], "").status.code(), Some(2));
}

#[test]
fn exec_runs_a_task_under_a_whole_configuration_sent_as_json() {
    let _suite = crate::common::suite(module_path!());
    // What the Ray executor sends its nodes: the task's resolved settings.
    let config = r#"{"tier": "subprocess", "max_output_bytes": 100, "timeout_s": 20}"#;
    let task = r#"{"id": "t", "code": "def f():\n    print('x' * 5000)\n    return 1\n"}"#;
    let out = lattice(&["exec", "--sandbox-config", config], task);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let result = &lines(&out)[0];
    assert_eq!(result["result"], json!(1));
    assert_eq!(result["tier"], json!("subprocess"));
    let stdout = result["stdout"].as_str().unwrap();
    assert!(
        stdout.len() < 300 && stdout.contains("truncated"),
        "{stdout}"
    );
    // A configuration that is not one is a usage error, naming the field.
    for bad in [
        r#"{"tier": "jail"}"#,
        r#"{"timeout_s": 0}"#,
        r#"{"level": "wasm"}"#,
    ] {
        let out = lattice(&["exec", "--sandbox-config", bad], task);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
    }
}
