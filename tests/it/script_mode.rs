//! Script mode: Python programs run as `__main__` with a stdin, their exit
//! code reported, on every tier, through the library, task JSON and CLI.

use std::time::Duration;

use lattice::sandbox::SandboxLevel;
use lattice::task::json::{outcome_to_json, parse_task};
use lattice::task::{ErrorKind, TaskError, TaskSubmission};
use serde_json::Value;

use crate::common::{err, failed_type, lattice_cli, run, ALL_TIERS};

const SUM: &str = "import sys\nn = int(input())\nnums = list(map(int, sys.stdin.readline().split()))\nrest = sys.stdin.read()\nprint(n * sum(nums))\nprint(repr(rest), file=sys.stderr)\nprint(__name__)\n";

#[test]
fn programs_read_stdin_and_report_their_exit_code_on_every_tier() {
    let _suite = crate::common::suite(module_path!());
    for tier in ALL_TIERS {
        let outcome = run(
            tier,
            TaskSubmission::script(SUM).with_stdin("2\n1 2 3\ntail\nend"),
        );
        assert_eq!(outcome.result, Ok(Value::Null), "{tier}: {outcome:?}");
        assert_eq!(outcome.exit_code, Some(0), "{tier}");
        assert_eq!(outcome.stdout, "12\n__main__\n", "{tier}");
        assert_eq!(outcome.stderr, "'tail\\nend'\n", "{tier}");

        // sys.stdin.buffer and the text layer both see the bytes, UTF-8 too.
        let bytes = run(
            tier,
            TaskSubmission::script(
                "import sys\nfirst = sys.stdin.buffer.readline()\nprint(len(first), sys.stdin.read())",
            )
            .with_stdin("héllo\nwörld"),
        );
        assert_eq!(bytes.stdout, "7 wörld\n", "{tier}: {bytes:?}");

        // No stdin: input() meets the end of it, as under `python prog.py < /dev/null`.
        let eof = run(tier, TaskSubmission::script("input()"));
        assert_eq!(eof.exit_code, Some(1), "{tier}");
        assert_eq!(failed_type(&eof), "EOFError", "{tier}");
    }
}

#[test]
fn exits_exceptions_and_syntax_errors_end_as_cpython_ends_them() {
    let _suite = crate::common::suite(module_path!());
    for tier in ALL_TIERS {
        let exit = run(
            tier,
            TaskSubmission::script("import sys\nprint('bye')\nsys.exit(3)"),
        );
        assert_eq!(exit.exit_code, Some(3), "{tier}: {exit:?}");
        assert_eq!(exit.stdout, "bye\n");
        assert_eq!(failed_type(&exit), "SystemExit");

        let zero = run(tier, TaskSubmission::script("import sys\nsys.exit(0)"));
        assert_eq!((zero.exit_code, zero.is_ok()), (Some(0), true), "{tier}");
        let none = run(tier, TaskSubmission::script("raise SystemExit"));
        assert_eq!((none.exit_code, none.is_ok()), (Some(0), true), "{tier}");

        // A message: printed on stderr, exit code 1.
        let message = run(
            tier,
            TaskSubmission::script("import sys\nsys.exit('no input')"),
        );
        assert_eq!(message.exit_code, Some(1), "{tier}");
        assert_eq!(message.stderr, "no input\n", "{tier}");

        let raised = run(
            tier,
            TaskSubmission::script("def f(x):\n    return 1 / x\n\nprint('before')\nf(0)\n"),
        );
        assert_eq!(raised.exit_code, Some(1), "{tier}");
        assert_eq!(raised.stdout, "before\n");
        let stderr = &raised.stderr;
        assert!(
            stderr.starts_with("Traceback (most recent call last):\n"),
            "{tier}: {stderr}"
        );
        assert!(stderr.contains("line 5, in <module>"), "{tier}: {stderr}");
        assert!(stderr.contains("line 2, in f"), "{tier}: {stderr}");
        assert!(
            stderr.ends_with("ZeroDivisionError: division by zero\n"),
            "{tier}: {stderr}"
        );
        assert!(!stderr.contains("lattice_driver") && !stderr.contains("driver.py"));
        match err(&raised) {
            TaskError::Failed {
                type_name,
                traceback,
                ..
            } => {
                assert_eq!(type_name, "ZeroDivisionError");
                assert_eq!(&traceback, stderr);
            }
            other => panic!("{tier}: {other:?}"),
        }

        let syntax = run(tier, TaskSubmission::script("print('never')\ndef f(:\n"));
        assert_eq!(syntax.exit_code, Some(1), "{tier}");
        assert_eq!(syntax.stdout, "", "{tier}");
        assert!(syntax.stderr.contains("SyntaxError"), "{tier}: {syntax:?}");
        assert_eq!(failed_type(&syntax), "SyntaxError");
    }
}

#[test]
fn limits_end_scripts_as_they_end_functions() {
    let _suite = crate::common::suite(module_path!());
    for tier in ALL_TIERS {
        let spin = run(
            tier,
            TaskSubmission::script("print('started', flush=True)\nwhile True:\n    pass\n")
                .with_timeout(Duration::from_secs(1)),
        );
        assert_eq!(err(&spin).kind(), ErrorKind::Timeout, "{tier}: {spin:?}");
        assert_eq!(spin.exit_code, None, "{tier}");
        assert!(spin.stdout.starts_with("started"), "{tier}: {spin:?}");
    }
}

#[test]
fn scripts_get_their_files_and_send_back_the_ones_asked_for() {
    let _suite = crate::common::suite(module_path!());
    for tier in [
        SandboxLevel::Wasm,
        SandboxLevel::Subprocess,
        SandboxLevel::Seccomp,
        SandboxLevel::Docker,
    ] {
        // Files land in the working directory; what is fetched is found
        // there even after the program moved away from it.
        let mut task = TaskSubmission::script(
            "import os\ntext = open('data/in.txt').read()\nopen('res.txt', 'w').write(text.upper())\nos.chdir('/')\nprint(text)\n",
        );
        task.files
            .insert("data/in.txt".into(), b"hello file".to_vec());
        task.fetch_files = vec!["res.txt".into()];
        let outcome = run(tier, task);
        assert_eq!(outcome.stdout, "hello file\n", "{tier}: {outcome:?}");
        assert_eq!(outcome.files["res.txt"], b"HELLO FILE", "{tier}");

        let mut task = TaskSubmission::script(
            "open('out.bin', 'wb').write(bytes(range(256)))\nraise SystemExit(4)\n",
        );
        task.fetch_files = vec!["out.bin".into(), "missing.txt".into()];
        let outcome = run(tier, task);
        assert_eq!(outcome.exit_code, Some(4), "{tier}: {outcome:?}");
        assert_eq!(outcome.files.len(), 1, "{tier}");
        assert_eq!(outcome.files["out.bin"], (0..=255u8).collect::<Vec<u8>>());
        let line = outcome_to_json(&outcome);
        assert!(line.contains(r#""files":{"out.bin":"AAECAwQF"#), "{line}");
    }
    // The wasm tier's scratch directory (its `/`) is gone with the task,
    // and writes to it are bounded by the mounts' write budget.
    let ours = format!("lattice-files-{}-", std::process::id());
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&ours))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let mut task = TaskSubmission::script(
        "data = b'x' * (1 << 20)\nwith open('big.bin', 'wb') as f:\n    for _ in range(2000):\n        f.write(data)\n",
    );
    task.fetch_files = vec!["none.txt".into()];
    let outcome = run(SandboxLevel::Wasm, task);
    assert_eq!(outcome.exit_code, Some(1), "{outcome:?}");
    assert!(outcome.stderr.contains("OSError"), "{outcome:?}");
}

#[test]
fn the_process_tiers_give_a_script_its_stdin_on_fd_0_too() {
    let _suite = crate::common::suite(module_path!());
    let big = "x".repeat(300_000) + "\n";
    for tier in [
        SandboxLevel::Subprocess,
        SandboxLevel::Seccomp,
        SandboxLevel::Docker,
    ] {
        let outcome = run(
            tier,
            TaskSubmission::script("import os\ndata = open(0).read()\nprint(len(data), data[:3])")
                .with_stdin(big.clone()),
        );
        assert_eq!(outcome.stdout, "300001 xxx\n", "{tier}: {outcome:?}");
    }
}

#[test]
fn script_fields_are_checked_and_travel_as_json() {
    let _suite = crate::common::suite(module_path!());
    let task = parse_task(
        r#"{"id": "s1", "code": "print(input())", "script": true, "stdin": "hi\n", "fetch_files": ["a"], "files": {"b": "aGk="}}"#,
    )
    .unwrap();
    assert!(task.script);
    assert_eq!(task.stdin.as_deref(), Some("hi\n"));
    assert_eq!(task.files["b"], b"hi");
    for bad in [
        r#"{"code": "print(1)", "stdin": "x"}"#,
        r#"{"code": "print(1)", "fetch_files": ["x"]}"#,
        r#"{"code": "print(1)", "script": true, "input": 1}"#,
        r#"{"code": "print(1)", "script": true, "entry": "main"}"#,
        r#"{"argv": ["cat"], "script": true}"#,
        r#"{"code": "print(1)", "script": true, "files": {"a": "not base64!"}}"#,
    ] {
        let error = parse_task(bad).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidTask, "{bad}");
    }
    // A submission built in Rust is checked the same way.
    let outcome = run(
        SandboxLevel::Wasm,
        TaskSubmission::script("print(1)").with_input(Value::from(1)),
    );
    assert_eq!(err(&outcome).kind(), ErrorKind::InvalidTask);

    let outcome = run(
        SandboxLevel::Wasm,
        TaskSubmission::script("print(input())").with_stdin("ok"),
    );
    let line: Value = serde_json::from_str(&outcome_to_json(&outcome)).unwrap();
    assert_eq!(line["status"], "ok");
    assert_eq!(line["exit_code"], 0);
    assert_eq!(line["stdout"], "ok\n");
    let back = lattice::task::json::parse_outcome(&outcome_to_json(&outcome)).unwrap();
    assert_eq!(back.exit_code, Some(0));
    // A function's result line has no exit_code.
    let function = run(
        SandboxLevel::Wasm,
        TaskSubmission::python("def f():\n    return 1\n"),
    );
    assert!(!outcome_to_json(&function).contains("exit_code"));
}

#[test]
fn the_cli_runs_a_script_with_its_stdin_and_exits_with_its_code() {
    let _suite = crate::common::suite(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("prog.py");
    std::fs::write(&program, SUM).unwrap();
    let program = program.to_str().unwrap();
    let out = lattice_cli(&["run", "--script", program], "3\n1 1\n", &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["exit_code"], 0);
    assert_eq!(line["stdout"], "6\n__main__\n");
    assert_eq!(line["tier"], "wasm");

    std::fs::write(
        dir.path().join("exit.py"),
        "import sys\nsys.exit(int(input()))",
    )
    .unwrap();
    let exit = dir.path().join("exit.py");
    let out = lattice_cli(
        &[
            "run",
            "--script",
            exit.to_str().unwrap(),
            "--tier",
            "subprocess",
        ],
        "7",
        &[],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (line["status"].as_str(), line["exit_code"].as_i64()),
        (Some("error"), Some(7))
    );

    // --stdin-file instead of the command's stdin; --input is a function's.
    std::fs::write(dir.path().join("in.txt"), "5\n2 2\n").unwrap();
    let input = dir.path().join("in.txt");
    let out = lattice_cli(
        &[
            "run",
            "--script",
            program,
            "--stdin-file",
            input.to_str().unwrap(),
        ],
        "",
        &[],
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["stdout"], "20\n__main__\n", "{out:?}");
    let out = lattice_cli(&["run", "--script", program, "--input", "1"], "", &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
