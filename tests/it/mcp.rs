//! `lattice-wasm mcp`: an MCP server on stdio, driven by the official MCP
//! Python SDK (PyPI `mcp`, in the venv the test command makes:
//! `LATTICE_MCP_PYTHON`) and by hand-written JSON-RPC for the edges.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// The Python with the MCP SDK (the test command sets it; else the venv it makes).
fn mcp_python() -> PathBuf {
    let python = std::env::var_os("LATTICE_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mcp-venv/bin/python")
        });
    assert!(
        python.exists(),
        "no Python with the MCP SDK at {}: run scripts/mcp-venv.sh (the test command does)",
        python.display()
    );
    python
}

fn sdk_session(tier: &str) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/mcp_client.py");
    let out = std::process::Command::new(mcp_python())
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_lattice-wasm"))
        .args(["--tier", tier, "--timeout", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tier}: the MCP client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_official_sdk_runs_python_in_one_session_per_connection() {
    let _suite = crate::common::suite(module_path!());
    for tier in ["wasm", "subprocess"] {
        let observed = sdk_session(tier);
        let first = &observed["first"];
        assert_eq!(first["protocol_version"], "2025-11-25", "{tier}");
        assert_eq!(first["server_name"], "lattice-wasm");
        let tools = first["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 1);
        assert_eq!(tools[0]["name"], "run_python");
        assert_eq!(tools[0]["schema"]["type"], "object");
        assert_eq!(tools[0]["schema"]["required"], json!(["code"]));
        let calls = first["calls"].as_array().unwrap();
        let call = |i: usize| {
            (
                calls[i]["text"].as_str().unwrap(),
                calls[i]["is_error"].as_bool().unwrap(),
            )
        };
        assert_eq!(call(0), ("hello\n", false), "{tier}");
        assert_eq!(call(1), ("42", false), "{tier}: state kept across calls");
        assert_eq!(call(2), ("40", false), "{tier}");
        let (text, is_error) = call(3);
        assert!(
            is_error && text.contains("ZeroDivisionError"),
            "{tier}: {text}"
        );
        assert!(
            text.contains("1 / 0"),
            "{tier}: the traceback shows the line: {text}"
        );
        assert_eq!(
            call(4),
            ("20", false),
            "{tier}: an exception keeps the state"
        );
        let (text, is_error) = call(5);
        assert!(is_error && text.starts_with("timeout"), "{tier}: {text}");
        assert_eq!(call(6), ("20", false), "{tier}: a limit keeps the state");
        let unknown = first["unknown_tool"].as_str().unwrap();
        assert!(unknown.contains("Unknown tool"), "{tier}: {unknown}");
        // A new connection has a session of its own.
        let (text, is_error) = (
            observed["second"]["calls"][0]["text"].as_str().unwrap(),
            observed["second"]["calls"][0]["is_error"]
                .as_bool()
                .unwrap(),
        );
        assert!(is_error && text.contains("NameError"), "{tier}: {text}");
    }
}

#[test]
fn the_server_answers_json_rpc_edges() {
    let _suite = crate::common::suite(module_path!());
    let input = [
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"server/discover","params":{}}"#,
        "this is not json",
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"run_python","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"run_python","arguments":{"code":"print('a\\nb')\n6 * 7"}}}"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#,
        "",
    ]
    .join("\n");
    let out = crate::common::cli_within(&["mcp"], &input, Duration::from_secs(120));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let by_id = |id: Value| {
        replies
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no reply to {id}: {replies:?}"))
            .clone()
    };
    // Notifications get no reply; every request exactly one.
    assert_eq!(replies.len(), 7, "{replies:?}");
    assert_eq!(by_id(json!(0))["result"]["protocolVersion"], "2024-11-05");
    assert!(by_id(json!(0))["result"]["capabilities"]["tools"].is_object());
    assert_eq!(by_id(json!("p"))["result"], json!({}));
    assert_eq!(by_id(json!(2))["error"]["code"], -32601);
    assert_eq!(by_id(Value::Null)["error"]["code"], -32700);
    assert_eq!(by_id(json!(3))["error"]["code"], -32602);
    let call = by_id(json!(4));
    assert_eq!(call["result"]["isError"], false);
    assert_eq!(call["result"]["content"][0]["text"], "a\nb\n42");
    assert_eq!(by_id(json!(5))["result"]["protocolVersion"], "2025-11-25");
    for reply in &replies {
        assert_eq!(reply["jsonrpc"], "2.0");
    }
}
