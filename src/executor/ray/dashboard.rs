//! What the executor reads over HTTP from the cluster's dashboard.

use std::time::Duration;

use serde_json::Value;

use crate::task::TaskError;

/// The User-Agent of every dashboard request. The dashboard answers 403 to
/// browser-like agents, so this must never look like one.
const USER_AGENT: &str = concat!(
    "lattice-wasm/",
    env!("CARGO_PKG_VERSION"),
    " (ray executor)"
);

/// One node as the dashboard lists it.
#[derive(Clone, Debug)]
pub(super) struct NodeInfo {
    pub(super) node_id: String,
    pub(super) node_ip: String,
    pub(super) alive: bool,
    pub(super) cpu: f64,
    pub(super) memory: u64,
    pub(super) gpu: f64,
}

/// The nodes the dashboard lists (`/api/v0/nodes`), dead ones included.
pub(super) fn fetch_nodes(dashboard: &str) -> Result<Vec<NodeInfo>, TaskError> {
    let url = format!("{dashboard}/api/v0/nodes?limit=10000&detail=false");
    let body = http_get_json(&url).map_err(|e| {
        TaskError::unavailable(format!(
            "can't read the Ray cluster's nodes from its dashboard ({url}): {e}"
        ))
    })?;
    let list = body
        .pointer("/data/result/result")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            TaskError::internal(format!(
                "unexpected answer from {url}: no data.result.result"
            ))
        })?;
    Ok(list
        .iter()
        .map(|node| {
            let total = |key: &str| {
                node.pointer(&format!("/resources_total/{key}"))
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
            };
            NodeInfo {
                node_id: text(node, "node_id").to_ascii_lowercase(),
                node_ip: text(node, "node_ip").to_string(),
                alive: text(node, "state") == "ALIVE",
                cpu: total("CPU"),
                memory: total("memory") as u64,
                gpu: total("GPU"),
            }
        })
        .collect())
}

/// GET a JSON document. On its own thread: reqwest's blocking client must
/// not run (or be dropped) inside an async runtime, and callers may be in one.
fn http_get_json(url: &str) -> Result<Value, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let client = reqwest::blocking::Client::builder()
                    .user_agent(USER_AGENT)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| e.to_string())?;
                let response = client.get(url).send().map_err(|e| e.to_string())?;
                let status = response.status();
                if !status.is_success() {
                    return Err(format!("HTTP {status}"));
                }
                response.json::<Value>().map_err(|e| e.to_string())
            })
            .join()
            .unwrap_or_else(|_| Err("the HTTP request panicked".into()))
    })
}

/// A string field of a JSON object, or "".
fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}
