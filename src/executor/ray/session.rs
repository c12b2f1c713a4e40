//! Sessions on the Ray cluster: a [`RaySession`] lives in the warm worker
//! of one node (worker.rs keeps it), for its whole life.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::executor::Shared;
use super::worker::SessionRequest;
use crate::sandbox::SessionState;
use crate::session::{Call, Reply};
use crate::task::TaskError;

/// A Python session kept on one node of the Ray cluster, in that node's
/// warm worker: the same calls, limits and replies as a local
/// [`Session`](crate::session::Session) on the tier its configuration
/// names. If its node dies, the call in flight and every later one fail
/// with `node_failed`; if its worker dies, with `internal` (a session's
/// state can't be sent again, so unlike a task it is never retried).
/// Closing (or dropping) it frees what it holds on the node. Calls from
/// several threads take turns.
///
/// ```no_run
/// use lattice::executor::{RayExecutor, RayOptions};
/// use lattice::sandbox::SandboxConfig;
/// use lattice::session::Call;
/// use serde_json::json;
///
/// let executor = RayExecutor::new(RayOptions {
///     address: Some("127.0.0.1:6379".into()),
///     ..RayOptions::default()
/// });
/// let session = executor.open_session(SandboxConfig::default(), None)?;
/// session.exec("def area(w, h):\n    return w * h").result?;
/// let reply = session.call("area", Call::args(vec![json!(3), json!(4)]));
/// assert_eq!(reply.result?, json!(12));
/// println!("on node {}", session.node_id());
/// session.close();
/// # Ok::<(), lattice::task::TaskError>(())
/// ```
pub struct RaySession {
    shared: Arc<Shared>,
    id: u64,
    worker: u64,
    node: String,
    slots: usize,
    closed: AtomicBool,
}

impl RaySession {
    /// Opens a session on `worker` (of `node`, which has `slots`).
    pub(super) fn open(
        shared: Arc<Shared>,
        (worker, node, slots): (u64, String, usize),
        config: &crate::sandbox::SandboxConfig,
    ) -> Result<RaySession, TaskError> {
        let session = RaySession {
            id: shared.next_id(),
            shared,
            worker,
            node,
            slots,
            closed: AtomicBool::new(false),
        };
        let config = serde_json::to_string(config)
            .map_err(|e| TaskError::internal(format!("can't encode the configuration: {e}")))?;
        let mut fields = Map::new();
        fields.insert("config".into(), Value::String(config));
        match session.request("open", fields).result {
            Ok(_) => Ok(session),
            Err(error) => {
                session.closed.store(true, Ordering::SeqCst);
                Err(error)
            }
        }
    }

    /// The id of the node the session lives on.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Runs `code` in the session's namespace; see
    /// [`Session::exec`](crate::session::Session::exec).
    pub fn exec(&self, code: &str) -> Reply {
        let mut fields = Map::new();
        fields.insert("code".into(), Value::String(code.to_string()));
        self.request("exec", fields)
    }

    /// Calls the function `entry` the session defined; see
    /// [`Session::call`](crate::session::Session::call).
    pub fn call(&self, entry: &str, call: Call) -> Reply {
        let mut fields = Map::new();
        fields.insert("entry".into(), Value::String(entry.to_string()));
        call.add_to(&mut fields);
        self.request("call", fields)
    }

    /// Closes the session; what it held on its node is gone when this
    /// returns. Later calls fail; closing again does nothing.
    pub fn close(&self) {
        if !self.closed.load(Ordering::SeqCst) {
            let _ = self.request("close", Map::new());
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    /// True until the session is closed or lost.
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && self.shared.worker_error(self.worker).is_none()
    }

    /// Sends one operation to the session's worker and waits for its reply.
    fn request(&self, op: &str, fields: Map<String, Value>) -> Reply {
        let started = std::time::Instant::now();
        if self.closed.load(Ordering::SeqCst) {
            let error = TaskError::invalid("the session is closed");
            return Reply::error(error, SessionState::Closed, started);
        }
        let request = SessionRequest {
            session: self.id,
            req: self.shared.next_id(),
            op: op.to_string(),
            fields,
        };
        let answer = self
            .shared
            .session_request(self.worker, &self.node, self.slots, &request);
        match answer {
            Ok(reply) => {
                let reply = Reply::from_json(&reply)
                    .unwrap_or_else(|error| Reply::error(error, SessionState::Closed, started));
                if reply.state == SessionState::Closed {
                    self.closed.store(true, Ordering::SeqCst);
                }
                reply
            }
            Err(error) => {
                self.closed.store(true, Ordering::SeqCst);
                Reply::error(error, SessionState::Closed, started)
            }
        }
    }
}

impl Drop for RaySession {
    fn drop(&mut self) {
        self.close();
    }
}
