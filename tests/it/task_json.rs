//! The JSON contract of design.md §6.

use lattice::task::json::{outcome_to_json, parse_outcome, parse_task};
use lattice::task::{Payload, TaskError, TaskOutcome, WasmSource};
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn every_field_of_a_task_is_read() {
    let _suite = crate::common::suite(module_path!());
    let task = parse_task(
        r#"{"id": "t-1", "code": "def f(x): return x", "entry": "f", "input": {"n": 1},
            "tier": "subprocess", "timeout_s": 2.5, "max_memory_mb": 128, "max_cpu_time_s": 1,
            "allowed_imports": ["json"], "network": true, "mounts": ["/data:/in", {"host": "/out", "guest": "/out", "rw": true}],
            "resources": {"cpu": 2, "cpu_mem": 1000000, "gpu": 1}, "node_id": "local", "gpu_id": 0}"#,
    )
    .unwrap();
    assert_eq!(task.id, Some(json!("t-1")));
    assert!(matches!(task.payload, Payload::Code(_)));
    assert_eq!(task.sandbox.timeout, Some(Duration::from_millis(2500)));
    assert_eq!(task.sandbox.max_memory_mb, Some(128));
    assert_eq!(task.sandbox.mounts.as_ref().unwrap().len(), 2);
    assert!(task.sandbox.mounts.as_ref().unwrap()[1].writable);
    assert_eq!(task.resources.gpu, Some(1.0));
    assert_eq!(task.gpu_id, Some(0));
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let _suite = crate::common::suite(module_path!());
    for (text, name) in [
        (r#"{"code": "def f(): pass", "timeout": 3}"#, "timeout"),
        (
            r#"{"code": "def f(): pass", "resources": {"cpus": 1}}"#,
            "cpus",
        ),
    ] {
        match parse_task(text) {
            Err(TaskError::InvalidTask { message, .. }) => {
                assert!(
                    message.contains(&format!("unknown field `{name}`")),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn bad_tasks_are_invalid_with_a_reason() {
    let _suite = crate::common::suite(module_path!());
    for text in [
        "not json",
        "[1, 2]",
        r#"{"id": 1}"#,
        r#"{"code": "x", "argv": ["true"]}"#,
        r#"{"code": "x", "input": 1, "args": [1]}"#,
        r#"{"code": "x", "timeout_s": -1}"#,
        r#"{"code": "x", "tier": "jail"}"#,
        r#"{"code": "x", "entry": "not an identifier"}"#,
        r#"{"code": "x", "mounts": ["relative:/x"]}"#,
        r#"{"argv": []}"#,
        r#"{"wasm": {"base64": "***"}}"#,
    ] {
        assert!(
            matches!(parse_task(text), Err(TaskError::InvalidTask { .. })),
            "{text} was accepted"
        );
    }
}

#[test]
fn huge_integers_keep_every_digit() {
    let _suite = crate::common::suite(module_path!());
    let digits = "1".repeat(400);
    let task = parse_task(&format!(
        r#"{{"code": "def f(x): return x", "input": [{digits}, 2.50]}}"#
    ))
    .unwrap();
    assert_eq!(task.input.unwrap().to_string(), format!("[{digits},2.50]"));
}

#[test]
fn wasm_payloads_by_path_and_by_value() {
    let _suite = crate::common::suite(module_path!());
    let by_path = parse_task(r#"{"wasm": "/tmp/m.wasm"}"#).unwrap();
    assert!(matches!(
        by_path.payload,
        Payload::Wasm(WasmSource::Path(_))
    ));
    let by_value = parse_task(r#"{"wasm": {"base64": "AGFzbQEAAAA="}}"#).unwrap();
    match by_value.payload {
        Payload::Wasm(WasmSource::Bytes(bytes)) => assert_eq!(&bytes[..4], b"\0asm"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn results_have_exactly_the_documented_fields_and_round_trip() {
    let _suite = crate::common::suite(module_path!());
    let ok = TaskOutcome {
        id: Some(json!(7)),
        result: Ok(serde_json::from_str("1267650600228229401496703205376").unwrap()),
        stdout: "hi\n".into(),
        stderr: String::new(),
        tier: Some(lattice::sandbox::SandboxLevel::Subprocess),
        node_id: Some("local".into()),
        duration: Duration::from_micros(1500),
        exit_code: None,
        files: Default::default(),
    };
    let text = outcome_to_json(&ok);
    assert!(
        text.contains("\"result\":1267650600228229401496703205376"),
        "{text}"
    );
    let value: Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "duration_ms",
            "error",
            "id",
            "node_id",
            "result",
            "status",
            "stderr",
            "stdout",
            "tier"
        ]
    );
    assert_eq!(parse_outcome(&text).unwrap(), ok);

    let failed = TaskOutcome::from_error(
        Some(json!("x")),
        TaskError::Timeout {
            limit: lattice::task::TimeLimit::Cpu,
            message: "too long".into(),
        },
    );
    let text = outcome_to_json(&failed);
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["status"], json!("error"));
    assert_eq!(value["error"]["kind"], json!("timeout"));
    let mut keys: Vec<&String> = value["error"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["kind", "message", "traceback", "type"]);
    assert_eq!(parse_outcome(&text).unwrap(), failed);
}
