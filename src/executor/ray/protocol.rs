//! The JSON lines the executor and its sidecar (`sidecar.py`) exchange:
//! [`Op`]s on the sidecar's stdin, [`Event`]s on its stdout.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request to the sidecar.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(super) enum Op<'a> {
    /// Run `task` (a task line) as one `ray.remote` call, under `config`
    /// (the task's whole resolved sandbox configuration, as JSON).
    Submit {
        id: u64,
        task: &'a str,
        config: &'a str,
        num_cpus: f64,
        memory: Option<u64>,
        num_gpus: f64,
        /// Hard node affinity.
        node_id: Option<&'a str>,
        /// `CUDA_VISIBLE_DEVICES` for the task; None leaves Ray's.
        cuda: Option<String>,
    },
    /// `ray.cancel(force=True)` of a submitted task.
    Cancel { id: u64 },
    /// Request lines (worker.rs) for the warm worker `worker`, which the
    /// sidecar starts on `node` with `slots` task slots the first time it
    /// is named.
    Send {
        worker: u64,
        node: &'a str,
        slots: usize,
        lines: &'a str,
    },
    /// What each node has free now; answered by a [`Event::Reply`].
    Available { req: u64 },
    /// Cancel what runs and exit.
    Shutdown,
}

/// What the sidecar reports.
#[derive(Debug, Deserialize)]
#[serde(tag = "ev", rename_all = "lowercase")]
pub(super) enum Event {
    /// Connected to the cluster.
    Ready {},
    /// Could not start: `kind` is `no_ray` or `connect`.
    Fatal {
        kind: String,
        #[serde(default)]
        message: String,
    },
    /// A Ray task ended: the `exec` process's exit status and output.
    Done {
        id: u64,
        rc: i64,
        #[serde(default)]
        out: String,
        #[serde(default)]
        err: String,
        #[serde(default)]
        node: Option<String>,
    },
    /// Ray failed the task before or instead of running it.
    Failed {
        id: u64,
        kind: FailureKind,
        #[serde(rename = "type", default)]
        type_name: String,
        #[serde(default)]
        message: String,
    },
    /// A warm task ended: its result line, as `exec` prints it (the worker
    /// writes this event; the sidecar passes it on).
    Outcome { id: u64, outcome: String },
    /// A warm worker is gone (its actor or process died, or its node did),
    /// with every task it had: `kind` says how.
    Lost {
        worker: u64,
        kind: FailureKind,
        #[serde(default)]
        message: String,
    },
    /// A warm worker's answer to a session operation (a
    /// [`crate::session::Reply`] as JSON; the worker writes this event).
    #[serde(rename = "session_reply")]
    SessionReply { req: u64, reply: Value },
    /// The answer to an [`Op::Available`]: free resources by node id, or
    /// why Ray could not tell.
    Reply {
        req: u64,
        #[serde(default)]
        available: HashMap<String, HashMap<String, Value>>,
        #[serde(default)]
        error: Option<String>,
    },
}

/// Why Ray failed a task (or a warm worker).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum FailureKind {
    /// Cancelled on request.
    Cancelled,
    /// Its node died.
    NodeFailed,
    /// Ray's memory monitor killed its worker.
    MemoryLimit,
    /// The binary could not be run on the node.
    Unavailable,
    /// Ray can't place it.
    Unschedulable,
    /// A warm worker's process or actor died on a node that lives on.
    Crashed,
    /// Anything else.
    #[serde(other)]
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_as_the_sidecar_writes_them() {
        let done: Event = serde_json::from_str(
            r#"{"ev": "done", "id": 3, "rc": 0, "out": "{}", "err": "", "node": "ab"}"#,
        )
        .unwrap();
        assert!(matches!(done, Event::Done { id: 3, rc: 0, .. }));
        let failed: Event = serde_json::from_str(
            r#"{"ev": "failed", "id": 4, "kind": "something_new", "type": "X", "message": "m"}"#,
        )
        .unwrap();
        assert!(matches!(
            failed,
            Event::Failed {
                kind: FailureKind::Internal,
                ..
            }
        ));
        let ready: Event =
            serde_json::from_str(r#"{"ev": "ready", "ray": "2.9", "node": "ab"}"#).unwrap();
        assert!(matches!(ready, Event::Ready {}));
        let outcome: Event = serde_json::from_str(
            r#"{"ev": "outcome", "id": 5, "outcome": "{\"status\": \"ok\"}"}"#,
        )
        .unwrap();
        assert!(matches!(outcome, Event::Outcome { id: 5, .. }));
        let lost: Event = serde_json::from_str(
            r#"{"ev": "lost", "worker": 2, "kind": "crashed", "message": "exited"}"#,
        )
        .unwrap();
        assert!(matches!(
            lost,
            Event::Lost {
                worker: 2,
                kind: FailureKind::Crashed,
                ..
            }
        ));
        let session: Event =
            serde_json::from_str(r#"{"ev": "session_reply", "req": 9, "reply": {"status": "ok"}}"#)
                .unwrap();
        assert!(matches!(session, Event::SessionReply { req: 9, .. }));
        let reply: Event =
            serde_json::from_str(r#"{"ev": "reply", "req": 1, "available": {"ab": {"CPU": 1.0}}}"#)
                .unwrap();
        let Event::Reply { available, .. } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(available["ab"]["CPU"], 1.0);
    }

    #[test]
    fn ops_encode_as_the_sidecar_reads_them() {
        let op = Op::Submit {
            id: 1,
            task: "{}",
            config: "{}",
            num_cpus: 1.0,
            memory: None,
            num_gpus: 0.0,
            node_id: None,
            cuda: Some(String::new()),
        };
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            serde_json::json!({"op": "submit", "id": 1, "task": "{}", "config": "{}", "num_cpus": 1.0,
                "memory": null, "num_gpus": 0.0, "node_id": null, "cuda": ""})
        );
        assert_eq!(
            serde_json::to_string(&Op::Shutdown).unwrap(),
            r#"{"op":"shutdown"}"#
        );
    }
}
