//! `POST /v1/run` (one task) and `POST /v1/batch` (task lines in, result
//! lines out, streamed).

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lattice::task::json::{outcome_to_json, task_id};
use lattice::task::{ErrorKind, TaskError, TaskOutcome, TaskSubmission};
use serde::Deserialize;
use serde_json::Value;

use super::Shared;

pub(super) async fn run(State(server): State<Shared>, body: Bytes) -> Response {
    let task = match std::str::from_utf8(&body) {
        Ok(text) => server.task(text).map_err(|error| (task_id(text), error)),
        Err(_) => Err((None, TaskError::invalid("the task is not UTF-8 JSON"))),
    };
    let outcome = match task {
        Ok(task) => {
            let _admitted = match server.admit(1) {
                Ok(admitted) => admitted,
                Err(full) => return full,
            };
            server.outcome(task).await
        }
        Err((id, error)) => server.refused(id, error),
    };
    result(&outcome)
}

/// An outcome as the answer: 400 for an invalid task, else 200.
fn result(outcome: &TaskOutcome) -> Response {
    let status = match &outcome.result {
        Err(error) if error.kind() == ErrorKind::InvalidTask => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        outcome_to_json(outcome),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchQuery {
    #[serde(default)]
    order: Order,
}

/// The order of a batch's result lines.
#[derive(Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Order {
    /// The order of the task lines.
    #[default]
    Input,
    /// As the tasks finish.
    Completion,
}

pub(super) async fn batch(
    State(server): State<Shared>,
    Query(query): Query<BatchQuery>,
    body: Body,
) -> Response {
    // A full queue refuses the batch before it starts; once started, it
    // waits for room instead (a bounded window of its tasks is in flight).
    if let Err(full) = server.admit(1) {
        return full;
    }
    let (lines, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(drive(server, query.order, body, lines));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let line = receiver.recv().await?;
        Some((Ok::<Bytes, Infallible>(line), receiver))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// What one task line became.
enum Line {
    Blank,
    Task(Box<TaskSubmission>),
    Refused(Box<TaskOutcome>),
}

/// Reads the task lines as they come, runs them (a window of them at
/// once) and sends their result lines. When the client goes away, the
/// tasks in flight are dropped, which cancels them.
async fn drive(server: Shared, order: Order, body: Body, out: tokio::sync::mpsc::Sender<Bytes>) {
    let window = (server.workers * 4).max(8);
    let mut input = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::new();
    // Set while the rest of a line too long to take is skipped.
    let mut skipping = false;
    let mut input_done = false;
    let mut line_no: u64 = 0;
    let mut next_seq: u64 = 0;
    let mut emit_seq: u64 = 0;
    let mut running = FuturesUnordered::new();
    let mut ready: BTreeMap<u64, TaskOutcome> = BTreeMap::new();
    loop {
        // Send what may go now.
        loop {
            let outcome = match order {
                Order::Input => ready.remove(&emit_seq),
                Order::Completion => ready.pop_first().map(|(_, outcome)| outcome),
            };
            let Some(outcome) = outcome else { break };
            emit_seq += 1;
            let mut line = outcome_to_json(&outcome);
            line.push('\n');
            if out.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
        if input_done && running.is_empty() && ready.is_empty() {
            return;
        }
        let room = running.len() + ready.len() < window;
        tokio::select! {
            biased;
            () = out.closed() => return,
            Some((seq, outcome)) = running.next(), if !running.is_empty() => {
                ready.insert(seq, outcome);
            }
            chunk = input.next(), if !input_done && room => {
                // Whole lines (None: one too long to take).
                let mut lines: Vec<Option<Vec<u8>>> = Vec::new();
                match chunk {
                    Some(Ok(bytes)) => {
                        let mut rest: &[u8] = &bytes;
                        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                            if std::mem::take(&mut skipping) {
                                buffer.clear();
                            } else if buffer.len() + end > server.max_body {
                                buffer.clear();
                                lines.push(None);
                            } else {
                                buffer.extend_from_slice(&rest[..end]);
                                lines.push(Some(std::mem::take(&mut buffer)));
                            }
                            rest = &rest[end + 1..];
                        }
                        if !skipping {
                            buffer.extend_from_slice(rest);
                            if buffer.len() > server.max_body {
                                // Refused now, the rest of it skipped.
                                buffer.clear();
                                skipping = true;
                                lines.push(None);
                            }
                        }
                    }
                    // The body ended, or broke off: what came is all there is.
                    Some(Err(_)) | None => {
                        input_done = true;
                        if !skipping && !buffer.is_empty() {
                            lines.push(Some(std::mem::take(&mut buffer)));
                        }
                    }
                }
                for line in lines {
                    line_no += 1;
                    let parsed = match line {
                        Some(line) => parse_line(&server, &line, line_no),
                        None => Line::Refused(Box::new(server.refused(
                            Some(Value::from(line_no)),
                            TaskError::invalid(format!(
                                "line {line_no} is longer than the limit of {} bytes (--max-body-bytes)",
                                server.max_body
                            )),
                        ))),
                    };
                    match parsed {
                        Line::Blank => {}
                        Line::Refused(outcome) => {
                            ready.insert(next_seq, *outcome);
                            next_seq += 1;
                        }
                        Line::Task(task) => {
                            let seq = next_seq;
                            next_seq += 1;
                            let server = server.clone();
                            running.push(async move {
                                let _in_flight = server.occupy(1);
                                (seq, server.outcome(*task).await)
                            });
                        }
                    }
                }
            }
        }
    }
}

fn parse_line(server: &Shared, line: &[u8], line_no: u64) -> Line {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Blank;
    }
    let default_id = || Value::from(line_no);
    match std::str::from_utf8(line) {
        Ok(text) => match server.task(text) {
            Ok(mut task) => {
                task.id.get_or_insert_with(default_id);
                Line::Task(Box::new(task))
            }
            Err(error) => Line::Refused(Box::new(
                server.refused(Some(task_id(text).unwrap_or_else(default_id)), error),
            )),
        },
        Err(_) => Line::Refused(Box::new(server.refused(
            Some(default_id()),
            TaskError::invalid(format!("line {line_no} is not UTF-8")),
        ))),
    }
}
