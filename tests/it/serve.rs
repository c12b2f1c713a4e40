//! `lattice-wasm serve`: a real server process, driven by real HTTP clients
//! (reqwest here, SandboxFusion's own Python client for /run_code).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A `serve` process on a free port of loopback, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    token: Option<String>,
    client: Client,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub(crate) fn start(args: &[&str]) -> Server {
        Self::start_with(args, None, &[])
    }

    fn start_with_token(args: &[&str], token: Option<&str>) -> Server {
        Self::start_with(args, token, &[])
    }

    /// With `env` set for the server (e.g. the Ray cluster's Python).
    pub(crate) fn start_with(
        args: &[&str],
        token: Option<&str>,
        env: &[(&str, &std::path::Path)],
    ) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lattice-wasm"));
        command.args(["serve", "--addr", "127.0.0.1:0"]).args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        let token_file = token.map(|token| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), format!("{token}\n")).unwrap();
            file
        });
        if let Some(file) = &token_file {
            command.arg("--token-file").arg(file.path());
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let base = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("serve exited: {:?}", child.wait()))
                .unwrap();
            stderr.lock().unwrap().push_str(&line);
            if let Some(rest) = line.split("serving on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    stderr.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        Server {
            child,
            base,
            token: token.map(String::from),
            client: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::blocking::Body>,
    ) -> reqwest::blocking::Response {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().unwrap()
    }

    pub(crate) fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self.post(path, body.to_string());
        let status = response.status();
        (status, response.json().unwrap_or(Value::Null))
    }

    pub(crate) fn get(&self, path: &str) -> reqwest::blocking::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().unwrap()
    }

    pub(crate) fn metrics(&self) -> String {
        self.get("/metrics").text().unwrap()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub(crate) fn terminate(mut self, within: Duration) -> i32 {
        // SAFETY: our child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop within {within:?}: {}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric line (`name{labels} value`), 0 when absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn run_answers_a_task_line_with_its_result_line() {
    let _suite = crate::common::suite(module_path!());
    let server = Server::start(&["--tier", "wasm"]);
    let (status, line) = server.post_json(
        "/v1/run",
        &json!({"id": "t1", "code": "def f(x):\n    print('hi')\n    return x * 2\n", "input": 21}),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(line["id"], "t1");
    assert_eq!(line["status"], "ok");
    assert_eq!(line["result"], 42);
    assert_eq!(line["stdout"], "hi\n");
    assert_eq!(line["tier"], "wasm");

    // A task that fails is still a 200, with its typed error.
    let (status, line) = server.post_json(
        "/v1/run",
        &json!({"code": "def f():\n    raise KeyError('k')\n"}),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(line["status"], "error");
    assert_eq!(line["error"]["kind"], "task_error");
    assert_eq!(line["error"]["type"], "KeyError");

    // Malformed JSON, an invalid task, a tier the operator did not allow: 400, invalid_task.
    for (body, what) in [
        ("{\"code\": ".to_string(), "malformed"),
        (
            json!({"id": 7, "code": "def f(): pass", "inptu": 1}).to_string(),
            "unknown field",
        ),
        (
            json!({"id": 8, "code": "def f(): pass", "tier": "none"}).to_string(),
            "not allowed",
        ),
        (
            json!({"code": "def f(): pass", "timeout_s": 1e6}).to_string(),
            "cap",
        ),
    ] {
        let response = server.post("/v1/run", body);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        let line: Value = response.json().unwrap();
        assert_eq!(line["status"], "error", "{what}");
        assert_eq!(line["error"]["kind"], "invalid_task", "{what}");
        assert!(
            line["error"]["message"].as_str().unwrap().contains(what),
            "{what}: {line}"
        );
    }
    let (_, line) = server.post_json("/v1/run", &json!({"id": 7, "code": 5}));
    assert_eq!(line["id"], 7, "the id of an invalid line is kept");

    // Script mode over HTTP.
    let (status, line) = server.post_json(
        "/v1/run",
        &json!({"code": "import sys\nprint(input()[::-1])\nsys.exit(2)", "script": true, "stdin": "abc\n"}),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (line["stdout"].as_str(), line["exit_code"].as_i64()),
        (Some("cba\n"), Some(2))
    );

    let response = server.get("/v1/nowhere");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = server.client.get(server.url("/v1/run")).send().unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn batch_streams_result_lines_in_either_order() {
    let _suite = crate::common::suite(module_path!());
    let server = Server::start(&["--tier", "wasm", "--concurrency", "2"]);
    let body: String = [
        json!({"id": "slow", "code": "import time\ndef f():\n    time.sleep(1.0)\n    return 'slow'\n"}).to_string(),
        String::new(),
        json!({"id": "fast", "code": "def f():\n    return 'fast'\n"}).to_string(),
        "not json".to_string(),
        json!({"code": "def f(x):\n    return x\n", "input": [1, 2]}).to_string(),
    ]
    .join("\n");
    let response = server.post("/v1/batch", body.clone());
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let lines: Vec<Value> = response
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&Value> = lines.iter().map(|l| &l["id"]).collect();
    assert_eq!(ids, [&json!("slow"), &json!("fast"), &json!(4), &json!(5)]);
    assert_eq!(lines[2]["error"]["kind"], "invalid_task");
    assert_eq!(lines[3]["result"], json!([1, 2]));

    let response = server.post("/v1/batch?order=completion", body);
    let ids: Vec<Value> = response
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].clone())
        .collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids.last().unwrap(), "slow", "{ids:?}");

    let response = server.post("/v1/batch?order=sideways", "");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn a_client_that_goes_away_cancels_what_it_asked_for() {
    let _suite = crate::common::suite(module_path!());
    let server = Server::start(&["--tier", "subprocess", "--concurrency", "2"]);
    let sleeper = |id: usize| {
        json!({"id": id, "code": format!("import time\ndef f():\n    time.sleep(30)\n    return {id}\n")})
            .to_string()
    };
    let body: String = (0..4).map(sleeper).collect::<Vec<_>>().join("\n") + "\n";
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /v1/batch HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Two sleepers run (one per worker): wait until they do, then hang up.
    let started = Instant::now();
    while metric(&server.metrics(), "lattice_tasks_running") < 2.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            server.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(stream);
    let started = Instant::now();
    loop {
        let metrics = server.metrics();
        let cancelled = metric(
            &metrics,
            "lattice_tasks_total{tier=\"subprocess\",kind=\"cancelled\"}",
        );
        if cancelled >= 2.0 && metric(&metrics, "lattice_tasks_running") == 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the tasks were not cancelled: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // No task process of the server's is left.
    let server_pid = i64::from(server.child.id());
    let started = Instant::now();
    while crate::common::all_pids()
        .into_iter()
        .any(|pid| crate::common::parent_of(pid) == Some(server_pid) && crate::common::alive(pid))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a task process outlived its cancel"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // /v1/run: a client that hangs up mid-task cancels it too.
    let mut stream = TcpStream::connect(&address).unwrap();
    let task = sleeper(9);
    write!(
        stream,
        "POST /v1/run HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n{task}",
        task.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(stream);
    let started = Instant::now();
    while metric(
        &server.metrics(),
        "lattice_tasks_total{tier=\"subprocess\",kind=\"cancelled\"}",
    ) < 3.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}",
            server.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sessions_keep_state_and_suspend_on_host_calls() {
    let _suite = crate::common::suite(module_path!());
    let server = Server::start(&["--tier", "wasm", "--timeout", "10"]);
    let (status, created) = server.post_json(
        "/v1/sessions",
        &json!({"functions": ["lookup", "fail"], "timeout_s": 5}),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["tier"], "wasm");
    let path = |op: &str| format!("/v1/sessions/{id}/{op}");

    let (status, reply) = server.post_json(&path("exec"), &json!({"code": "x = 40\nx + 2"}));
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        (reply["status"].as_str(), &reply["value"]),
        (Some("ok"), &json!(42))
    );
    assert_eq!(reply["repr"], "42");
    let (_, reply) = server.post_json(
        &path("exec"),
        &json!({"code": "def g(a, b=1):\n    return a * b + x"}),
    );
    assert_eq!(reply["status"], "ok");
    let (_, reply) = server.post_json(
        &path("call"),
        &json!({"entry": "g", "args": [2], "kwargs": {"b": 3}}),
    );
    assert_eq!(reply["value"], 46, "{reply}");

    // A host function suspends the exec until the client answers it.
    let (_, reply) = server.post_json(
        &path("exec"),
        &json!({"code": "r = lookup('k', n=2)\nprint('got', r)\ntry:\n    fail()\nexcept HostError as e:\n    caught = str(e)\n[r, caught]"}),
    );
    assert_eq!(reply["status"], "host_call", "{reply}");
    let call = &reply["call"];
    assert_eq!(
        (call["name"].as_str(), &call["args"], &call["kwargs"]),
        (Some("lookup"), &json!(["k"]), &json!({"n": 2}))
    );
    let call_id = call["id"].as_str().unwrap().to_string();
    // Busy meanwhile: another exec waits its turn.
    let (status, _) = server.post_json(&path("exec"), &json!({"code": "1"}));
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, reply) = server.post_json(
        &path("resume"),
        &json!({"call_id": call_id, "result": {"v": [1, 2]}}),
    );
    assert_eq!(reply["status"], "host_call", "{reply}");
    assert_eq!(reply["call"]["name"], "fail");
    let fail_id = reply["call"]["id"].as_str().unwrap().to_string();
    let (status, _) = server.post_json(&path("resume"), &json!({"call_id": call_id, "result": 1}));
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an answered call is not waiting any more"
    );
    let (_, reply) = server.post_json(
        &path("resume"),
        &json!({"call_id": fail_id, "error": "no such key"}),
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["value"], json!([{"v": [1, 2]}, "no such key"]));
    assert_eq!(reply["stdout"], "got {'v': [1, 2]}\n");

    // An unanswered host call counts against the exec's time.
    let (_, reply) = server.post_json(&path("exec"), &json!({"code": "lookup(1)"}));
    assert_eq!(reply["status"], "host_call");
    let stale = reply["call"]["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(6));
    let (_, reply) = server.post_json(&path("resume"), &json!({"call_id": stale, "result": 1}));
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["error"]["kind"], "timeout", "{reply}");
    let (_, reply) = server.post_json(&path("exec"), &json!({"code": "x"}));
    assert_eq!(reply["value"], 40, "the session goes on: {reply}");

    // A snapshot, and a new session from it, with its own functions.
    let snapshot = server.get(&format!("/v1/sessions/{id}/snapshot"));
    assert_eq!(snapshot.status(), StatusCode::OK);
    let bytes = snapshot.bytes().unwrap();
    assert!(!bytes.is_empty());
    let mut request = server
        .client
        .post(server.url("/v1/sessions?functions=lookup"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec());
    if let Some(token) = &server.token {
        request = request.bearer_auth(token);
    }
    let restored: Value = request.send().unwrap().json().unwrap();
    let copy = restored["id"].as_str().unwrap().to_string();
    assert_ne!(copy, id);
    let (_, reply) = server.post_json(
        &format!("/v1/sessions/{copy}/exec"),
        &json!({"code": "g(1)"}),
    );
    assert_eq!(reply["value"], 41, "{reply}");
    let mut request = server
        .client
        .post(server.url("/v1/sessions"))
        .header("content-type", "application/octet-stream")
        .body(b"not a snapshot".to_vec());
    if let Some(token) = &server.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let listed: Value = server.get("/v1/sessions").json().unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 2);
    assert!(metric(&server.metrics(), "lattice_sessions_open") == 2.0);
    for session in [&id, &copy] {
        let response = server
            .client
            .delete(server.url(&format!("/v1/sessions/{session}")))
            .send()
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let (status, _) = server.post_json(&path("exec"), &json!({"code": "1"}));
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Settings the operator refuses; names that can't be functions.
    let (status, body) = server.post_json("/v1/sessions", &json!({"tier": "none"}));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = server.post_json("/v1/sessions", &json!({"functions": ["not a name"]}));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.post_json("/v1/sessions", &json!({"timeout_s": 1e6}));
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[test]
fn sessions_on_a_process_tier_expire_when_idle_and_leave_nothing() {
    let _suite = crate::common::suite(module_path!());
    let server = Server::start(&["--tier", "subprocess", "--session-idle-timeout", "2"]);
    let (status, created) = server.post_json("/v1/sessions", &json!({"tier": "subprocess"}));
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (_, reply) = server.post_json(
        &format!("/v1/sessions/{id}/exec"),
        &json!({"code": "import os\n(os.getpid(), os.readlink('/proc/self/ns/pid'))"}),
    );
    let process = crate::common::TaskProcess {
        pid: reply["value"][0].as_i64().unwrap(),
        namespace: reply["value"][1].as_str().map(String::from),
    };
    let response = server.get(&format!("/v1/sessions/{id}/snapshot"));
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "snapshots are the wasm tier's"
    );
    // Watched without touching it (an exec would keep it alive).
    let started = Instant::now();
    loop {
        let listed: Value = server.get("/v1/sessions").json().unwrap();
        if !listed.to_string().contains(&id) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "not expired: {listed}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (status, _) = server.post_json(&format!("/v1/sessions/{id}/exec"), &json!({"code": "1"}));
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        crate::common::gone(&process),
        "the session's process {process} outlived it"
    );
}

/// SandboxFusion's own client (PyPI `sandbox-fusion`), unchanged, against
/// /run_code: what a code-RL pipeline sends.
const FUSION_CLIENT: &str = r#"
import json, sys
from sandbox_fusion import run_code, RunCodeRequest, RunStatus, set_sandbox_endpoint
set_sandbox_endpoint(sys.argv[1])
cases = {
    "pass": dict(code="a, b = map(int, input().split())\nprint(a + b)", stdin="2 3\n"),
    "wrong": dict(code="print(int(input()) * 2)", stdin="2\n"),
    "runtime": dict(code="x = [1]\nprint('partial')\nx[5]", stdin=""),
    "timeout": dict(code="while True:\n    pass", run_timeout=1),
    "syntax": dict(code="def f(:\n  pass"),
    "exit": dict(code="import sys\nsys.exit(3)"),
    "files": dict(code="print(open('in/a.txt').read())\nopen('out.txt', 'w').write('done')",
                  files={"in/a.txt": "aGVsbG8="}, fetch_files=["out.txt", "nope.txt"]),
    "cpp": dict(code="int main() {}", language="cpp"),
}
out = {}
for name, args in cases.items():
    args.setdefault("language", "python")
    try:
        response = run_code(RunCodeRequest(**args), max_attempts=1)
    except Exception as e:
        # The client raises on SandboxError (after its retries).
        out[name] = {"status": "SandboxError", "message": str(e)}
        continue
    run = response.run_result
    out[name] = {
        "status": response.status.value if hasattr(response.status, "value") else response.status,
        "message": response.message,
        "run_status": None if run is None else (run.status.value if hasattr(run.status, "value") else run.status),
        "return_code": None if run is None else run.return_code,
        "stdout": None if run is None else run.stdout,
        "stderr": None if run is None else run.stderr,
        "time": None if run is None else run.execution_time,
        "files": response.files,
    }
print(json.dumps(out))
"#;

fn client_python() -> std::path::PathBuf {
    let python = std::env::var_os("LATTICE_MCP_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mcp-venv/bin/python")
        });
    assert!(
        python.exists(),
        "no Python with SandboxFusion's client at {}: run scripts/mcp-venv.sh (the test command does)",
        python.display()
    );
    python
}

#[test]
fn sandbox_fusion_clients_work_unchanged() {
    let _suite = crate::common::suite(module_path!());
    for tier in ["wasm", "subprocess"] {
        let server = Server::start(&["--tier", tier]);
        let out = Command::new(client_python())
            .args(["-c", FUSION_CLIENT, &server.base])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tier}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cases: Value = serde_json::from_slice(&out.stdout).unwrap();
        let case = |name: &str| &cases[name];
        assert_eq!(case("pass")["status"], "Success", "{tier}: {cases}");
        assert_eq!(case("pass")["run_status"], "Finished");
        assert_eq!(case("pass")["return_code"], 0);
        assert_eq!(case("pass")["stdout"], "5\n");
        assert!(case("pass")["time"].as_f64().unwrap() > 0.0);
        // A wrong answer is the client's to judge: the run succeeded.
        assert_eq!(
            (
                case("wrong")["status"].as_str(),
                case("wrong")["stdout"].as_str()
            ),
            (Some("Success"), Some("4\n"))
        );
        assert_eq!(case("runtime")["status"], "Failed");
        assert_eq!(case("runtime")["run_status"], "Finished");
        assert_eq!(case("runtime")["return_code"], 1);
        assert_eq!(case("runtime")["stdout"], "partial\n");
        assert!(case("runtime")["stderr"]
            .as_str()
            .unwrap()
            .contains("IndexError: list index out of range"));
        assert_eq!(case("timeout")["status"], "Failed");
        assert_eq!(case("timeout")["run_status"], "TimeLimitExceeded");
        assert_eq!(case("timeout")["return_code"], Value::Null);
        assert_eq!(case("syntax")["status"], "Failed");
        assert_eq!(case("syntax")["return_code"], 1);
        assert!(case("syntax")["stderr"]
            .as_str()
            .unwrap()
            .contains("SyntaxError"));
        assert_eq!(
            (
                case("exit")["status"].as_str(),
                case("exit")["return_code"].as_i64()
            ),
            (Some("Failed"), Some(3))
        );
        assert_eq!(case("cpp")["status"], "SandboxError");
        assert!(case("cpp")["message"].as_str().unwrap().contains("python"));
        assert_eq!(case("files")["status"], "Success", "{}", case("files"));
        assert_eq!(case("files")["stdout"], "hello\n");
        assert_eq!(case("files")["files"], json!({"out.txt": "ZG9uZQ=="}));
    }
}

#[test]
fn health_resources_and_metrics_describe_the_service() {
    let _suite = crate::common::suite(module_path!());
    let server = Server::start(&["--tier", "wasm"]);
    let health: Value = server.get("/v1/health").json().unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["executor"], "local");
    assert_eq!(health["tier"], "wasm");
    let resources: Value = server.get("/v1/resources").json().unwrap();
    assert_eq!(resources["nodes"][0]["node_id"], "local");
    server.post_json("/v1/run", &json!({"code": "def f():\n    return 1\n"}));
    server.post_json("/v1/run", &json!({"code": "def f():\n    return 1 / 0\n"}));
    server.post_json("/v1/run", &json!({"code": "def f(", "tier": "wasm"}));
    let response = server.get("/metrics");
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().unwrap();
    assert_eq!(
        metric(&text, "lattice_tasks_total{tier=\"wasm\",kind=\"ok\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "lattice_tasks_total{tier=\"wasm\",kind=\"task_error\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "lattice_task_duration_seconds_count"),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "lattice_task_duration_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    for gauge in [
        "lattice_tasks_running ",
        "lattice_tasks_queued ",
        "lattice_sessions_open ",
    ] {
        assert!(text.contains(gauge), "{gauge}: {text}");
    }
    assert!(metric(&text, "lattice_http_responses_total{code=\"200\"}") >= 4.0);
}

#[test]
fn tokens_body_caps_and_a_full_queue_are_enforced() {
    let _suite = crate::common::suite(module_path!());
    // Beyond loopback without a token: refused before it listens.
    let out = crate::common::cli_within(
        &["serve", "--addr", "0.0.0.0:0"],
        "",
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));

    let server = Server::start_with_token(
        &[
            "--tier",
            "wasm",
            "--concurrency",
            "1",
            "--max-queue",
            "1",
            "--max-body-bytes",
            "2000",
        ],
        Some("s3cret-token"),
    );
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret-token"),
        Some("Bearer s3cret-tokenX"),
    ] {
        let mut request = server.client.get(server.url("/v1/health"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    assert_eq!(server.get("/v1/health").status(), StatusCode::OK);

    let big = json!({"code": format!("def f():\n    return '{}'\n", "x".repeat(5000))});
    let response = server.post("/v1/run", big.to_string());
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A batch line over the cap is refused as that line; the others run.
    let body = format!("{big}\n{}\n", json!({"code": "def f():\n    return 2\n"}));
    let lines: Vec<Value> = server
        .post("/v1/batch", body)
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["error"]["kind"], "invalid_task");
    assert_eq!(lines[1]["result"], 2);

    // One task in flight fills a queue of one: the next request is told to come back.
    let slow = {
        let url = server.url("/v1/run");
        let client = server.client.clone();
        std::thread::spawn(move || {
            client
                .post(url)
                .bearer_auth("s3cret-token")
                .body(
                    json!({"code": "import time\ndef f():\n    time.sleep(2)\n    return 1\n"})
                        .to_string(),
                )
                .send()
                .unwrap()
                .status()
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let response = server.post(
        "/v1/run",
        json!({"code": "def f():\n    return 1\n"}).to_string(),
    );
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(slow.join().unwrap(), StatusCode::OK);
    let response = server.post(
        "/v1/run",
        json!({"code": "def f():\n    return 1\n"}).to_string(),
    );
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "room again once the task is done"
    );
}

#[test]
fn sigterm_finishes_or_cancels_what_runs_and_leaves_nothing() {
    let _suite = crate::common::suite(module_path!());
    let server = Server::start(&["--tier", "subprocess", "--grace", "2", "--concurrency", "2"]);
    let base = server.base.clone();
    let send = |code: &str| {
        let url = format!("{base}/v1/run");
        let body = json!({"code": code}).to_string();
        std::thread::spawn(move || -> Value {
            Client::new()
                .post(url)
                .body(body)
                .send()
                .unwrap()
                .json()
                .unwrap()
        })
    };
    let short = send("import time\ndef f():\n    time.sleep(1)\n    return 'done'\n");
    let long = send("import time, os\ndef f():\n    time.sleep(60)\n    return 'never'\n");
    std::thread::sleep(Duration::from_millis(500));
    let (_, created) = server.post_json("/v1/sessions", &json!({}));
    assert!(created["id"].is_string(), "{created}");
    let server_pid = i64::from(server.child.id());
    let children_before: Vec<i64> = crate::common::all_pids()
        .into_iter()
        .filter(|&pid| crate::common::parent_of(pid) == Some(server_pid))
        .collect();
    assert!(children_before.len() >= 3, "two tasks and a session run");
    let code = server.terminate(Duration::from_secs(15));
    assert_eq!(code, 0);
    assert_eq!(
        short.join().unwrap()["result"],
        "done",
        "a task within the grace period finishes"
    );
    let cancelled = long.join().unwrap();
    assert_eq!(cancelled["error"]["kind"], "cancelled", "{cancelled}");
    for pid in children_before {
        assert!(!crate::common::alive(pid), "{pid} outlived the server");
    }
    // Nothing listens any more.
    let address = base.trim_start_matches("http://");
    assert!(TcpStream::connect(address).is_err());
}
