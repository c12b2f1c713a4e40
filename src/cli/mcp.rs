//! `mcp`: a Model Context Protocol server on stdio (JSON-RPC 2.0, one
//! message per line) with one tool, `run_python`, that runs code in the
//! connection's session: state is kept across the calls of one connection
//! (one process), nothing is shared between connections.
//!
//! Spoken: `initialize` (protocol versions 2024-11-05, 2025-06-18 and
//! 2025-11-25),
//! `ping`, `tools/list`, `tools/call`, and the notifications
//! `notifications/initialized` and `notifications/cancelled` (which stops
//! the call it names; no reply is sent for it). Any other request gets
//! "method not found". The tool's result text is what the code printed
//! and the repr of its final expression's value; an exception or a limit
//! is a result with `isError: true` and the error in its text.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use lattice::sandbox::CancelToken;
use lattice::session::{Reply, Session};
use lattice::task::TaskError;
use serde_json::{json, Value};

use super::args::SessionArgs;

/// The protocol versions this server speaks, newest last (not 2025-03-26,
/// whose JSON-RPC batches it does not take).
const VERSIONS: [&str; 3] = ["2024-11-05", "2025-06-18", "2025-11-25"];

const TOOL: &str = "run_python";

/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

pub(super) fn run(args: SessionArgs) -> Result<i32> {
    let server = Arc::new(Server {
        args,
        session: Mutex::new(None),
        running: Mutex::new(HashMap::new()),
        out: Mutex::new(std::io::stdout()),
    });
    let stdin = std::io::stdin();
    let mut calls = Vec::new();
    for line in stdin.lock().split(b'\n') {
        let Ok(line) = line else { break };
        if line.trim_ascii().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_slice(&line) {
            Ok(message) => message,
            Err(e) => {
                server.error(Value::Null, PARSE_ERROR, &format!("parse error: {e}"));
                continue;
            }
        };
        if message.is_array() {
            // Batches were in protocol 2025-03-26 only; not spoken here.
            server.error(
                Value::Null,
                INVALID_REQUEST,
                "JSON-RPC batches are not supported",
            );
            continue;
        }
        if let Some(call) = server.clone().handle(message) {
            calls.push(call);
        }
        calls.retain(|call: &std::thread::JoinHandle<()>| !call.is_finished());
    }
    // End of input: the client is gone; finish what runs, then close.
    for call in calls {
        let _ = call.join();
    }
    if let Some(session) = lock(&server.session).take() {
        session.close();
    }
    Ok(0)
}

struct Server {
    args: SessionArgs,
    /// The connection's session, opened at its first call.
    session: Mutex<Option<Arc<Session>>>,
    /// The cancel tokens of the calls running, by request id (as JSON text).
    running: Mutex<HashMap<String, CancelToken>>,
    out: Mutex<std::io::Stdout>,
}

impl Server {
    /// Handles one message; a tool call runs on a thread of its own (so a
    /// cancel can be read meanwhile), whose handle is returned.
    fn handle(self: Arc<Self>, message: Value) -> Option<std::thread::JoinHandle<()>> {
        let id = message.get("id").cloned();
        let Some(method) = message.get("method").and_then(Value::as_str) else {
            // A response from the client (we send no requests), or junk.
            if message.get("result").is_none() && message.get("error").is_none() {
                self.error(
                    id.unwrap_or(Value::Null),
                    INVALID_REQUEST,
                    "not a JSON-RPC request",
                );
            }
            return None;
        };
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        let Some(id) = id.filter(|id| !id.is_null()) else {
            self.notification(method, &params);
            return None;
        };
        match method {
            "initialize" => {
                let asked = params.get("protocolVersion").and_then(Value::as_str);
                let version = asked
                    .filter(|v| VERSIONS.contains(v))
                    .unwrap_or(VERSIONS[VERSIONS.len() - 1]);
                self.reply(
                    id,
                    json!({
                        "protocolVersion": version,
                        "capabilities": {"tools": {"listChanged": false}},
                        "serverInfo": {"name": "lattice-wasm", "version": env!("CARGO_PKG_VERSION")},
                        "instructions": format!(
                            "run_python runs Python code in a sandboxed session ({} tier); variables, functions and imports persist across calls.",
                            self.args.config().tier
                        ),
                    }),
                );
                None
            }
            "ping" => {
                self.reply(id, json!({}));
                None
            }
            "tools/list" => {
                self.reply(id, json!({"tools": [tool()]}));
                None
            }
            "tools/call" => self.tool_call(id, &params),
            _ => {
                self.error(id, METHOD_NOT_FOUND, &format!("method not found: {method}"));
                None
            }
        }
    }

    fn notification(&self, method: &str, params: &Value) {
        if method == "notifications/cancelled" {
            if let Some(request) = params.get("requestId") {
                if let Some(cancel) = lock(&self.running).get(&request.to_string()) {
                    cancel.cancel();
                }
            }
        }
    }

    fn tool_call(
        self: Arc<Self>,
        id: Value,
        params: &Value,
    ) -> Option<std::thread::JoinHandle<()>> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name != TOOL {
            self.error(id, INVALID_PARAMS, &format!("Unknown tool: {name}"));
            return None;
        }
        let Some(code) = params
            .get("arguments")
            .and_then(|a| a.get("code"))
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            self.error(
                id,
                INVALID_PARAMS,
                "run_python needs the argument `code` (a string)",
            );
            return None;
        };
        let cancel = CancelToken::new();
        {
            let mut running = lock(&self.running);
            if running.contains_key(&id.to_string()) {
                drop(running);
                self.error(
                    id,
                    INVALID_REQUEST,
                    "a request with this id is still running",
                );
                return None;
            }
            running.insert(id.to_string(), cancel.clone());
        }
        let server = self.clone();
        let call_id = id.clone();
        let thread = std::thread::Builder::new()
            .name("lattice-mcp-call".into())
            .spawn(move || {
                let id = call_id;
                let result = match server.session() {
                    Ok((session, reopened)) => {
                        let mut result = tool_result(&session.exec_cancellable(&code, &cancel));
                        if reopened {
                            // The client's state is gone: say so.
                            if let Some(text) = result["content"][0]["text"].as_str() {
                                result["content"][0]["text"] = Value::String(format!(
                                    "[the previous session was closed (idle or stopped); this ran in a new, empty one]\n{text}"
                                ));
                            }
                        }
                        result
                    }
                    Err(error) => error_result(&format!("the sandbox session can't open: {error}")),
                };
                lock(&server.running).remove(&id.to_string());
                // A cancelled request gets no reply.
                if !cancel.is_cancelled() {
                    server.reply(id, result);
                }
            });
        match thread {
            Ok(thread) => Some(thread),
            Err(e) => {
                lock(&self.running).remove(&id.to_string());
                self.error(id, INTERNAL_ERROR, &format!("can't start the call: {e}"));
                None
            }
        }
    }

    /// The connection's session, opened on first use (one at a time);
    /// true if it replaced one that was closed.
    fn session(&self) -> Result<(Arc<Session>, bool), TaskError> {
        let mut session = lock(&self.session);
        if let Some(open) = session.as_ref().filter(|s| s.is_open()) {
            return Ok((open.clone(), false));
        }
        let reopened = session.is_some();
        let config = self.args.config();
        if config.tier == lattice::sandbox::SandboxLevel::Wasm {
            lattice::sandbox::wasm::warm()?;
        }
        let opened = Arc::new(Session::open_with_idle_timeout(
            config,
            self.args
                .idle_timeout
                .unwrap_or(lattice::session::DEFAULT_IDLE_TIMEOUT),
        )?);
        *session = Some(opened.clone());
        Ok((opened, reopened))
    }

    fn reply(&self, id: Value, result: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }

    fn error(&self, id: Value, code: i64, message: &str) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}));
    }

    fn send(&self, message: Value) {
        let mut out = lock(&self.out);
        // One line per message: compact JSON escapes every newline.
        let _ = writeln!(out, "{message}");
        let _ = out.flush();
    }
}

/// The one tool.
fn tool() -> Value {
    json!({
        "name": TOOL,
        "title": "Run Python",
        "description": "Run Python code in a sandboxed session. State (variables, functions, imports) persists across calls of this connection. Returns what the code printed and the repr of the value of its last expression, if any.",
        "inputSchema": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python source to run"}},
            "required": ["code"],
        },
    })
}

/// The tool result of a reply: stdout, stderr and the value's repr, or the
/// error.
fn tool_result(reply: &Reply) -> Value {
    let mut text = String::new();
    text.push_str(&reply.stdout);
    if !reply.stderr.is_empty() {
        text.push_str(&reply.stderr);
    }
    let is_error = match &reply.result {
        Ok(_) => {
            if let Some(repr) = reply.repr.as_deref().filter(|r| *r != "None") {
                text.push_str(repr);
            }
            false
        }
        Err(TaskError::Failed {
            type_name,
            message,
            traceback,
        }) => {
            if traceback.is_empty() {
                text.push_str(&format!("{type_name}: {message}"));
            } else {
                text.push_str(traceback.trim_end());
            }
            true
        }
        Err(error) => {
            text.push_str(&format!("{}: {error}", error.kind().as_str()));
            true
        }
    };
    json!({"content": [{"type": "text", "text": text}], "isError": is_error})
}

fn error_result(message: &str) -> Value {
    json!({"content": [{"type": "text", "text": message}], "isError": true})
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
