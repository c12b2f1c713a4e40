//! The task and result JSON decoders on arbitrary bytes: they must never
//! panic, and what they accept must survive the trip the Ray and Docker
//! transports give it (encode here, decode on the other side) unchanged.

#![no_main]

use lattice::task::json::{outcome_to_json, parse_outcome, parse_task, TaskSpec};
use lattice::task::TaskSubmission;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Batch and exec refuse non-UTF-8 before decoding.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(task) = parse_task(text) {
        let sent = encode(&task);
        let received =
            parse_task(&sent).unwrap_or_else(|e| panic!("re-decoding {sent} failed: {e}"));
        assert_eq!(sent, encode(&received), "the task changed on the way");
    }
    if let Ok(outcome) = parse_outcome(text) {
        let sent = outcome_to_json(&outcome);
        let received =
            parse_outcome(&sent).unwrap_or_else(|e| panic!("re-decoding {sent} failed: {e}"));
        assert_eq!(sent, outcome_to_json(&received), "the result changed on the way");
    }
});

fn encode(task: &TaskSubmission) -> String {
    let spec = TaskSpec::from_submission(task).expect("a decoded task has a JSON form");
    serde_json::to_string(&spec).expect("a task spec serialises")
}
