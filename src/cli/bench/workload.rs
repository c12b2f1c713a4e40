//! The benchmark's workloads: Python source, the inputs of its tasks, and
//! the answer each task must give. The answers are computed here, in Rust,
//! so that no contender grades its own work.

use crate::cli::args::WorkloadKind;
use lattice::task::{TaskError, TaskOutcome, TaskSubmission};
use serde_json::{json, Value};

impl WorkloadKind {
    pub(crate) const ALL: [WorkloadKind; 8] = [
        WorkloadKind::Trivial,
        WorkloadKind::Cpu,
        WorkloadKind::Sort,
        WorkloadKind::Imports,
        WorkloadKind::Io,
        WorkloadKind::Raises,
        WorkloadKind::Session,
        WorkloadKind::Http,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            WorkloadKind::Trivial => "trivial",
            WorkloadKind::Cpu => "cpu",
            WorkloadKind::Sort => "sort",
            WorkloadKind::Imports => "imports",
            WorkloadKind::Io => "io",
            WorkloadKind::Raises => "raises",
            WorkloadKind::Session => "session",
            WorkloadKind::Http => "http",
            WorkloadKind::Python => "python",
        }
    }

    /// One line for the table's section heading.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            WorkloadKind::Trivial => "def f(x): return x + 1",
            WorkloadKind::Cpu => "recursive fib(25)",
            WorkloadKind::Sort => "generate 10^5 ints from a seed, sort, checksum",
            WorkloadKind::Imports => "json, re, collections, datetime in the function",
            WorkloadKind::Io => "1,000 strings of 1,000 chars in (~1 MB), reversed out",
            WorkloadKind::Raises => "raises ValueError (expected failure, kind checked)",
            WorkloadKind::Session => {
                "exec `x + 1` in an open session, one call at a time, 20 in a row per tier (p50 over calls 2-20; idle: call 1, after the other tiers' blocks)"
            }
            WorkloadKind::Http => {
                "def f(x): return x + 1 as POST /v1/run to `serve` from 64 keep-alive connections, beside `batch` of the same lines"
            }
            WorkloadKind::Python => {
                "def f(x): return x + 1 through one lattice_wasm.map call in Python, beside `batch` of the same tasks"
            }
        }
    }
}

/// What one task must produce.
#[derive(Clone, Debug)]
pub(super) enum Expect {
    Value(Value),
    /// The Python exception type the function must raise.
    Raises(&'static str),
}

/// What one task did produce, in a form every contender can give.
#[derive(Clone, Debug)]
pub(super) enum Observed {
    Value(Value),
    /// The function raised an exception of this type.
    Raised(String),
    /// Anything else: a limit, a crash, a lattice error.
    Failed(String),
}

impl Observed {
    /// What a lattice tier's outcome amounts to.
    pub(super) fn from_outcome(outcome: &TaskOutcome) -> Observed {
        match &outcome.result {
            Ok(value) => Observed::Value(value.clone()),
            Err(TaskError::Failed { type_name, .. }) => Observed::Raised(type_name.clone()),
            Err(error) => Observed::Failed(format!(
                "{} error: {error}",
                error.to_record().kind.as_str()
            )),
        }
    }
}

/// One task's input and its answer.
#[derive(Clone, Debug)]
pub(super) struct Case {
    pub input: Value,
    pub expect: Expect,
}

impl Expect {
    /// Ok if `observed` is this answer; else what was wrong.
    pub(super) fn verify(&self, observed: &Observed) -> Result<(), String> {
        match (self, observed) {
            (Expect::Value(want), Observed::Value(got)) if want == got => Ok(()),
            (Expect::Raises(want), Observed::Raised(got)) if want == got => Ok(()),
            _ => Err(format!(
                "expected {}, got {}",
                self.describe(),
                describe_observed(observed)
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            Expect::Value(value) => format!("result {}", abbreviate(&value.to_string())),
            Expect::Raises(type_name) => format!("a task_error raising {type_name}"),
        }
    }

    /// The JSON the reference drivers check against.
    pub(super) fn to_json(&self) -> Value {
        match self {
            Expect::Value(value) => json!({ "value": value }),
            Expect::Raises(type_name) => json!({ "raises": type_name }),
        }
    }
}

fn describe_observed(observed: &Observed) -> String {
    match observed {
        Observed::Value(value) => format!("result {}", abbreviate(&value.to_string())),
        Observed::Raised(type_name) => format!("a task_error raising {type_name}"),
        Observed::Failed(message) => abbreviate(message),
    }
}

/// The first 160 characters of `text`, marked when cut (a 1 MB result
/// would drown the message that it was wrong).
pub(super) fn abbreviate(text: &str) -> String {
    const KEEP: usize = 160;
    match text.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

/// A workload: its source and the cases its tasks cycle through.
pub(super) struct Workload {
    pub kind: WorkloadKind,
    pub code: &'static str,
    cases: Vec<Case>,
}

impl Workload {
    pub(super) fn new(kind: WorkloadKind) -> Workload {
        let (code, cases) = match kind {
            WorkloadKind::Trivial => (TRIVIAL, trivial_cases()),
            WorkloadKind::Cpu => (CPU, vec![cpu_case()]),
            WorkloadKind::Sort => (SORT, sort_cases()),
            WorkloadKind::Imports => (IMPORTS, imports_cases()),
            WorkloadKind::Io => (IO, io_cases()),
            WorkloadKind::Raises => (RAISES, raises_cases()),
            WorkloadKind::Session | WorkloadKind::Http | WorkloadKind::Python => {
                unreachable!("measured apart (bench/session.rs, bench/http.rs, bench/python.rs)")
            }
        };
        Workload { kind, code, cases }
    }

    pub(super) fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Task `task`'s case (tasks cycle through a few distinct cases, so
    /// answers need not be computed per task and big inputs exist once).
    pub(super) fn case(&self, task: usize) -> &Case {
        &self.cases[task % self.cases.len()]
    }

    pub(super) fn cases(&self) -> &[Case] {
        &self.cases
    }

    /// Task `task` as a lattice submission.
    pub(super) fn submission(&self, task: usize) -> TaskSubmission {
        TaskSubmission::python(self.code).with_input(self.case(task).input.clone())
    }
}

pub(super) const TRIVIAL: &str = "def f(x):\n    return x + 1\n";

fn trivial_cases() -> Vec<Case> {
    (0..256)
        .map(|i: u64| Case {
            input: json!(i),
            expect: Expect::Value(json!(i + 1)),
        })
        .collect()
}

const CPU: &str = "\
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def f(n):
    return fib(n)
";

fn cpu_case() -> Case {
    Case {
        input: json!(25),
        expect: Expect::Value(json!(fib(25))),
    }
}

fn fib(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

const SORT: &str = "\
def f(spec):
    x = spec[\"seed\"]
    values = []
    for _ in range(spec[\"n\"]):
        x = (x * 1103515245 + 12345) % 2147483648
        values.append(x)
    values.sort()
    checksum = sum(i * v for i, v in enumerate(values, 1)) % 2305843009213693951
    return {\"n\": len(values), \"min\": values[0], \"max\": values[-1], \"checksum\": checksum}
";

const SORT_LEN: usize = 100_000;

fn sort_cases() -> Vec<Case> {
    (1..=8u64)
        .map(|seed| Case {
            input: json!({ "seed": seed, "n": SORT_LEN }),
            expect: Expect::Value(sort_answer(seed, SORT_LEN)),
        })
        .collect()
}

/// What SORT returns: the same generator, sort and checksum.
fn sort_answer(seed: u64, n: usize) -> Value {
    let mut x = seed;
    let mut values: Vec<u64> = (0..n)
        .map(|_| {
            x = (x * 1_103_515_245 + 12_345) % 2_147_483_648;
            x
        })
        .collect();
    values.sort_unstable();
    let checksum = values
        .iter()
        .zip(1u128..)
        .map(|(&v, i)| i * v as u128)
        .sum::<u128>()
        % 2_305_843_009_213_693_951;
    json!({
        "n": n,
        "min": values[0],
        "max": values[n - 1],
        "checksum": checksum as u64,
    })
}

const IMPORTS: &str = "\
import collections
import datetime
import json
import re


def f(x):
    words = re.findall(r\"[a-z]+\", x[\"text\"])
    top = collections.Counter(words).most_common(2)
    day = datetime.date(2024, 1, 1) + datetime.timedelta(days=x[\"day\"])
    summary = {\"top\": top, \"date\": day.isoformat(), \"words\": len(words)}
    return json.loads(json.dumps(summary))
";

fn imports_cases() -> Vec<Case> {
    (0..16u64)
        .map(|i| {
            let text = "the quick brown fox jumps over the lazy dog. ".repeat(1 + i as usize % 3)
                + &"zebra, ".repeat(i as usize * 2 % 7);
            let day = i * 37;
            Case {
                expect: Expect::Value(imports_answer(&text, day)),
                input: json!({ "text": text, "day": day }),
            }
        })
        .collect()
}

/// What IMPORTS returns: the two most common lowercase words (ties in
/// first-seen order, as `Counter.most_common`), the date, the word count.
fn imports_answer(text: &str, day: u64) -> Value {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for word in &words {
        match counts.iter_mut().find(|(w, _)| w == word) {
            Some((_, n)) => *n += 1,
            None => counts.push((word, 1)),
        }
    }
    // A stable sort keeps first-seen order among equal counts.
    counts.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let top: Vec<Value> = counts.iter().take(2).map(|(w, n)| json!([w, n])).collect();
    json!({
        "top": top,
        "date": iso_date(days_from_civil(2024, 1, 1) + day as i64),
        "words": words.len(),
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The ISO date of a day number (the inverse of [`days_from_civil`]).
fn iso_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

const IO: &str = "\
def f(rows):
    return [row[::-1] for row in rows]
";

const IO_ROWS: usize = 1000;
const IO_ROW_LEN: usize = 1000;

fn io_cases() -> Vec<Case> {
    (0..3)
        .map(|variant| {
            let rows: Vec<String> = (0..IO_ROWS).map(|row| io_row(variant, row)).collect();
            let reversed: Vec<String> = rows.iter().map(|r| r.chars().rev().collect()).collect();
            Case {
                input: json!(rows),
                expect: Expect::Value(json!(reversed)),
            }
        })
        .collect()
}

/// A row of lowercase letters that differs by row and variant.
fn io_row(variant: usize, row: usize) -> String {
    (0..IO_ROW_LEN)
        .map(|k| char::from(b'a' + ((row * 7 + k * 13 + variant * 5) % 26) as u8))
        .collect()
}

const RAISES: &str = "\
def f(x):
    raise ValueError(f\"bad input: {x}\")
";

fn raises_cases() -> Vec<Case> {
    (0..16u64)
        .map(|i| Case {
            input: json!(i),
            expect: Expect::Raises("ValueError"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_python() {
        assert_eq!(iso_date(days_from_civil(2024, 1, 1)), "2024-01-01");
        // datetime.date(2024, 1, 1) + datetime.timedelta(days=400)
        assert_eq!(iso_date(days_from_civil(2024, 1, 1) + 400), "2025-02-04");
        assert_eq!(iso_date(days_from_civil(2024, 1, 1) + 59), "2024-02-29");
    }

    #[test]
    fn answers_match_python() {
        // Checked against CPython 3.11 running the same source.
        assert_eq!(
            sort_answer(1, SORT_LEN),
            json!({"n": 100000, "min": 44191, "max": 2147449866u64, "checksum": 256908172737751374u64})
        );
        assert_eq!(
            imports_answer("the cat and the hat and the bat", 400),
            json!({"top": [["the", 3], ["and", 2]], "date": "2025-02-04", "words": 8})
        );
        assert_eq!(fib(25), 75025);
    }

    #[test]
    fn verify_names_the_difference() {
        let expect = Expect::Raises("ValueError");
        assert!(expect
            .verify(&Observed::Raised("ValueError".into()))
            .is_ok());
        let wrong = expect.verify(&Observed::Value(json!(1))).unwrap_err();
        assert!(
            wrong.contains("ValueError") && wrong.contains("result 1"),
            "{wrong}"
        );
        let long = abbreviate(&"x".repeat(10_000));
        assert!(
            long.len() < 200 && long.ends_with("(10000 bytes)"),
            "{long}"
        );
    }
}
