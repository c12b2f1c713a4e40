//! Compiled task code, kept across tasks by the exact text of its source,
//! with the regular expressions that source compiles.
//!
//! Evaluation and RL loops run the same code with many inputs, and every
//! task is a fresh instance that would compile it again (~0.05 ms for two
//! lines, ~0.18 ms for a dozen, on a fresh copy of the snapshot). The
//! driver instead loads the code object the first such task compiled
//! (`marshal`, ~0.02–0.03 ms). The same holds for its regular expressions:
//! `re`'s compiler is Python, and its cache starts empty in every task
//! (a `findall` with `[a-z]+` took ~0.2 ms; ~0.015 ms with the pattern
//! loaded from what an earlier compile handed to `_sre.compile`).
//!
//! Both come from the guest, so who may store them is the whole design:
//! - only a one-shot task whose driver compiles its code as a module first
//!   thing ([`CodeCacheSlot::for_task`]; not script mode, not sessions, not
//!   Wasm payloads), and only in the order the driver asks, before any of
//!   the task's code ran: the first question closes the slot to anything
//!   but what it leads to. A compile is taken only right after the driver
//!   was told "wanted"; regexes are taken only right after the driver, on
//!   reading the kept code, was told which patterns to compile, and it
//!   compiles them before the task's module runs, so the task can't reach
//!   an open slot, even through introspection;
//! - which patterns a source uses is the one thing taken from the task
//!   after its code ran (once, as records the host checks): data only, for
//!   a later run's driver to compile with the pristine `re` before that
//!   run's code, never code or compiled forms from the task;
//! - everything is filed under the task's own source, which the host
//!   knows, never under a source the guest names; a task can neither read
//!   nor write another source's entry;
//! - nothing was printed before a store: a compile that warned
//!   (`SyntaxWarning`) is not kept, so that every run prints its warning
//!   (the driver leaves a pattern that warns to the task in the same way).
//!
//! The host never compiles, nor reads what it keeps: the bytes only ever go
//! back into a guest, where the sandbox holds whatever they are. A source is
//! kept from its second run on, so a stream of distinct sources costs a hash
//! each and no copy. Its regexes are named by that run, compiled by the
//! next and loaded from the one after.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock};

/// Largest source kept, in bytes.
const MAX_SOURCE: usize = 256 << 10;
/// Largest compiled form kept, in bytes (the code, and the regexes apart).
const MAX_COMPILED: usize = 1 << 20;
/// What the cache holds at most, sources and compiled forms together.
const MAX_BYTES: usize = 32 << 20;
/// Sources remembered as seen once (hashes), before that set starts over.
const MAX_SEEN: usize = 1 << 14;
/// Most patterns kept for one source, and the longest pattern, in bytes.
const MAX_PATTERNS: usize = 32;
const MAX_PATTERN: usize = 4 << 10;

/// A kept source's regular expressions, each answer led by its tag byte.
#[derive(Clone, Debug)]
pub(super) enum Regexes {
    /// No run has said which patterns it compiled: the next one may
    /// (`R`).
    Unreported,
    /// The patterns a run compiled, as checked records: the next run's
    /// driver compiles them before the task's code (`W` and the records).
    Wanted(Arc<[u8]>),
    /// What that compile handed to `_sre.compile` (`K` and its marshal;
    /// `K` alone for none).
    Kept(Arc<[u8]>),
}

impl Regexes {
    fn size(&self) -> usize {
        match self {
            Regexes::Unreported => 0,
            Regexes::Wanted(bytes) | Regexes::Kept(bytes) => bytes.len(),
        }
    }
}

/// What is kept for one source.
struct Entry {
    compiled: Arc<[u8]>,
    regexes: Regexes,
}

/// The process's cache (the wasm tier has one Python guest per process).
struct CodeCache {
    entries: HashMap<Arc<str>, Entry>,
    /// Sources in the order they were kept: the oldest goes first.
    order: VecDeque<Arc<str>>,
    bytes: usize,
    /// Hashes of sources seen once and not kept yet.
    seen: HashSet<u64>,
    hasher: RandomState,
    /// Tasks handed a kept compile, and kept regexes (for tests).
    #[cfg(test)]
    hits: u64,
    #[cfg(test)]
    regex_hits: u64,
}

fn cache() -> &'static Mutex<CodeCache> {
    static CACHE: OnceLock<Mutex<CodeCache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(CodeCache::new()))
}

fn lock() -> std::sync::MutexGuard<'static, CodeCache> {
    // The cache's invariants hold between statements: a panic elsewhere
    // leaves nothing half-done.
    cache()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CodeCache {
    fn new() -> CodeCache {
        CodeCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            seen: HashSet::new(),
            hasher: RandomState::new(),
            #[cfg(test)]
            hits: 0,
            #[cfg(test)]
            regex_hits: 0,
        }
    }

    fn insert(&mut self, source: Arc<str>, compiled: Arc<[u8]>) {
        if self.entries.contains_key(&source) {
            return;
        }
        self.make_room(source.len() + compiled.len());
        self.bytes += source.len() + compiled.len();
        self.order.push_back(source.clone());
        let regexes = Regexes::Unreported;
        self.entries.insert(source, Entry { compiled, regexes });
    }

    /// Sets what is kept of `source`'s regexes, if `source` is still kept
    /// and `regexes` comes next (`Unreported` -> `Wanted` or `Kept`,
    /// `Wanted` -> `Kept`): two runs racing can't undo each other.
    fn set_regexes(&mut self, source: &str, regexes: Regexes) {
        let Some(entry) = self.entries.get_mut(source) else {
            return;
        };
        let next = matches!(
            (&entry.regexes, &regexes),
            (Regexes::Unreported, Regexes::Wanted(_) | Regexes::Kept(_))
                | (Regexes::Wanted(_), Regexes::Kept(_))
        );
        if !next {
            return;
        }
        self.bytes -= entry.regexes.size();
        entry.regexes = Regexes::Unreported;
        self.make_room(regexes.size());
        // Making room may have let this very entry go.
        if let Some(entry) = self.entries.get_mut(source) {
            self.bytes += regexes.size();
            entry.regexes = regexes;
        }
    }

    /// Lets the oldest entries go until `size` more bytes fit.
    fn make_room(&mut self, size: usize) {
        while self.bytes + size > MAX_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.entries.remove(&oldest) {
                self.bytes -= oldest.len() + gone.compiled.len() + gone.regexes.size();
            }
        }
    }
}

/// One task's access to the cache, held by its store. The states follow
/// the driver's order: ask, read, then the regex answer and what it allows.
#[derive(Debug, Default)]
pub(super) enum CodeCacheSlot {
    /// Nothing to read, nothing may be stored.
    #[default]
    Closed,
    /// The compiled form of the task's source (and its regexes), until the
    /// guest asks.
    Hit(Arc<str>, Arc<[u8]>, Regexes),
    /// The guest was told the compiled form's length; it reads it next.
    Reading(Arc<str>, Arc<[u8]>, Regexes),
    /// The compiled form was read: the regex question comes next.
    Read(Arc<str>, Regexes),
    /// The guest was told the regex answer's length; it reads it next.
    ReadingRegexes(Arc<str>, Regexes),
    /// The source ran before: its compiled form is wanted, once the guest
    /// asks.
    Wanted(Arc<str>),
    /// The guest asked and was told "wanted": its next call may store.
    Storing(Arc<str>),
    /// The guest read which patterns to compile: its next call may store
    /// what they compiled to.
    StoringRegexes(Arc<str>),
    /// The guest may say, once, which patterns the task compiled.
    Reporting(Arc<str>),
}

/// What the guest's first question gets (`lattice.code_cache_len`), and
/// the regex question when there is nothing to say.
const NOTHING: i32 = -2;
const WANTED: i32 = -1;

impl CodeCacheSlot {
    /// The slot of a one-shot task whose driver compiles `source` as a
    /// module before running any of it.
    pub(super) fn for_task(source: &str) -> CodeCacheSlot {
        if source.len() > MAX_SOURCE {
            return CodeCacheSlot::Closed;
        }
        let mut cache = lock();
        if let Some((key, entry)) = cache.entries.get_key_value(source) {
            let slot =
                CodeCacheSlot::Hit(key.clone(), entry.compiled.clone(), entry.regexes.clone());
            #[cfg(test)]
            {
                cache.hits += 1;
            }
            return slot;
        }
        let hash = cache.hasher.hash_one(source);
        if cache.seen.remove(&hash) {
            return CodeCacheSlot::Wanted(source.into());
        }
        if cache.seen.len() >= MAX_SEEN {
            cache.seen.clear();
        }
        cache.seen.insert(hash);
        CodeCacheSlot::Closed
    }

    /// The guest's question: the length of the compiled form to read,
    /// [`WANTED`], or [`NOTHING`]. Asked once: every later question gets
    /// [`NOTHING`].
    pub(super) fn ask(&mut self) -> i32 {
        match std::mem::take(self) {
            CodeCacheSlot::Hit(source, compiled, regexes) => {
                let len = compiled.len() as i32;
                *self = CodeCacheSlot::Reading(source, compiled, regexes);
                len
            }
            CodeCacheSlot::Wanted(source) => {
                *self = CodeCacheSlot::Storing(source);
                WANTED
            }
            _ => NOTHING,
        }
    }

    /// The compiled form the guest was told the length of (once).
    pub(super) fn read(&mut self) -> Option<Arc<[u8]>> {
        match std::mem::take(self) {
            CodeCacheSlot::Reading(source, compiled, regexes) => {
                *self = CodeCacheSlot::Read(source, regexes);
                Some(compiled)
            }
            _ => None,
        }
    }

    /// Keeps `compiled` for the task's source, if this is the store the
    /// slot waits for and nothing was printed before it. Once kept, the
    /// task may say which patterns it compiles; otherwise the slot closes.
    pub(super) fn store(&mut self, compiled: &[u8], printed: bool) -> bool {
        let CodeCacheSlot::Storing(source) = std::mem::take(self) else {
            return false;
        };
        if printed || compiled.is_empty() || compiled.len() > MAX_COMPILED {
            return false;
        }
        lock().insert(source.clone(), compiled.into());
        *self = CodeCacheSlot::Reporting(source);
        true
    }

    /// The regex question, right after the compiled form was read: the
    /// length of the answer to read, or [`NOTHING`].
    pub(super) fn ask_regexes(&mut self) -> i32 {
        match std::mem::take(self) {
            CodeCacheSlot::Read(source, regexes) => {
                let len = regex_answer(&regexes).len() as i32;
                *self = CodeCacheSlot::ReadingRegexes(source, regexes);
                len
            }
            _ => NOTHING,
        }
    }

    /// The regex answer the guest was told the length of (once); what it
    /// says opens the slot to the store or the report it asks for.
    pub(super) fn read_regexes(&mut self) -> Option<Arc<[u8]>> {
        let CodeCacheSlot::ReadingRegexes(source, regexes) = std::mem::take(self) else {
            return None;
        };
        let answer = regex_answer(&regexes);
        match regexes {
            Regexes::Unreported => *self = CodeCacheSlot::Reporting(source),
            Regexes::Wanted(_) => *self = CodeCacheSlot::StoringRegexes(source),
            Regexes::Kept(_) => {
                #[cfg(test)]
                {
                    lock().regex_hits += 1;
                }
            }
        }
        Some(answer)
    }

    /// Keeps `compiled` (what the wanted patterns compiled to) for the
    /// task's source, if this is the store the slot waits for and nothing
    /// was printed before it. The slot is closed after.
    pub(super) fn store_regexes(&mut self, compiled: &[u8], printed: bool) -> bool {
        let CodeCacheSlot::StoringRegexes(source) = std::mem::take(self) else {
            return false;
        };
        if printed || compiled.len() > MAX_COMPILED {
            return false;
        }
        let kept = [&b"K"[..], compiled].concat();
        lock().set_regexes(&source, Regexes::Kept(kept.into()));
        true
    }

    /// Takes the task's word on which patterns it compiled (`records`, see
    /// [`check_records`]), once, if the slot allows it. The slot is closed
    /// after.
    pub(super) fn report_regexes(&mut self, records: &[u8]) -> bool {
        let CodeCacheSlot::Reporting(source) = std::mem::take(self) else {
            return false;
        };
        if !check_records(records) {
            return false;
        }
        let regexes = if records.is_empty() {
            Regexes::Kept(Arc::from(&b"K"[..]))
        } else {
            Regexes::Wanted([&b"W"[..], records].concat().into())
        };
        lock().set_regexes(&source, regexes);
        true
    }
}

/// What the regex question answers for `regexes`.
fn regex_answer(regexes: &Regexes) -> Arc<[u8]> {
    static REPORT: OnceLock<Arc<[u8]>> = OnceLock::new();
    match regexes {
        Regexes::Unreported => REPORT.get_or_init(|| Arc::from(&b"R"[..])).clone(),
        Regexes::Wanted(bytes) | Regexes::Kept(bytes) => bytes.clone(),
    }
}

/// Whether `records` is at most [`MAX_PATTERNS`] records of a kind byte
/// (`s`: the pattern is str, as UTF-8 with surrogates; `b`: bytes), the
/// flags (i64, little-endian), the pattern's length (u32, little-endian,
/// at most [`MAX_PATTERN`]) and the pattern. The driver that reads them
/// then needs no more checks than a decode.
fn check_records(mut records: &[u8]) -> bool {
    let mut count = 0;
    while !records.is_empty() {
        count += 1;
        let Some((head, rest)) = records.split_at_checked(13) else {
            return false;
        };
        let len = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes")) as usize;
        if count > MAX_PATTERNS || !matches!(head[0], b's' | b'b') || len > MAX_PATTERN {
            return false;
        }
        let Some((_, rest)) = rest.split_at_checked(len) else {
            return false;
        };
        records = rest;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source no other test uses (the cache is the process's).
    fn source(name: &str) -> String {
        format!("def f(x):\n    return '{name}'\n")
    }

    #[test]
    fn a_source_is_kept_from_its_second_run_and_served_from_its_third() {
        let code = source("kept");
        let mut first = CodeCacheSlot::for_task(&code);
        assert_eq!(first.ask(), NOTHING);
        assert!(!first.store(b"compiled", false));
        let mut second = CodeCacheSlot::for_task(&code);
        assert_eq!(second.ask(), WANTED);
        assert!(second.store(b"compiled", false));
        let mut third = CodeCacheSlot::for_task(&code);
        assert_eq!(third.ask(), 8);
        assert_eq!(third.read().as_deref(), Some(&b"compiled"[..]));
        assert_eq!(third.ask(), NOTHING);
        assert!(third.read().is_none());
    }

    #[test]
    fn a_slot_takes_one_store_and_only_right_after_being_told_wanted() {
        let code = source("once");
        let _ = CodeCacheSlot::for_task(&code);
        let mut slot = CodeCacheSlot::for_task(&code);
        // Before the question: refused, and the slot is closed for good.
        assert!(!slot.store(b"early", false));
        assert_eq!(slot.ask(), NOTHING);
        let _ = CodeCacheSlot::for_task(&code);
        let mut slot = CodeCacheSlot::for_task(&code);
        assert_eq!(slot.ask(), WANTED);
        // After something was printed (a compile warning): refused.
        assert!(!slot.store(b"compiled", true));
        assert!(!slot.store(b"compiled", false));
        assert!(matches!(
            CodeCacheSlot::for_task(&code),
            CodeCacheSlot::Closed
        ));
        // A hit's slot takes no store either.
        let mut slot = CodeCacheSlot::for_task(&code);
        assert_eq!(slot.ask(), WANTED);
        assert!(slot.store(b"compiled", false));
        let mut hit = CodeCacheSlot::for_task(&code);
        assert_eq!(hit.ask(), 8);
        assert!(!hit.store(b"poison", false));
        assert_eq!(
            CodeCacheSlot::for_task(&code).read(),
            None,
            "read before the question"
        );
        let mut again = CodeCacheSlot::for_task(&code);
        again.ask();
        assert_eq!(again.read().as_deref(), Some(&b"compiled"[..]));
    }

    /// Through the real guest: the second run stores the compile, the
    /// third is handed it, and all three answer alike.
    #[test]
    fn a_task_run_again_is_served_the_code_its_second_run_compiled() {
        use crate::sandbox::{CancelToken, SandboxConfig, SandboxExecutor, SandboxLevel};
        use crate::task::TaskSubmission;
        let code = "def f(x):\n    return [x, 'run again', {'k': (1, 2.5)}]\n";
        let sandbox = SandboxExecutor::new(SandboxConfig {
            tier: SandboxLevel::Wasm,
            ..SandboxConfig::default()
        });
        let hits = || lock().hits;
        for run in 0..3 {
            let before = hits();
            let task = TaskSubmission::python(code).with_input(serde_json::json!(run));
            let outcome = sandbox.run(&task, &CancelToken::new());
            assert_eq!(
                outcome.result.expect("the task runs"),
                serde_json::json!([run, "run again", {"k": [1, 2.5]}])
            );
            assert_eq!(lock().entries.contains_key(code), run >= 1, "run {run}");
            // Other tests' tasks may hit too: at least this one did.
            assert!(hits() > before || run < 2, "run {run}");
        }
    }

    /// One record of the regex report.
    fn record(kind: u8, flags: i64, pattern: &[u8]) -> Vec<u8> {
        let mut record = vec![kind];
        record.extend(flags.to_le_bytes());
        record.extend((pattern.len() as u32).to_le_bytes());
        record.extend(pattern);
        record
    }

    /// A slot of `code` that has read its kept compile.
    fn read_slot(code: &str) -> CodeCacheSlot {
        let mut slot = CodeCacheSlot::for_task(code);
        assert_eq!(slot.ask(), 8);
        assert!(slot.read().is_some());
        slot
    }

    #[test]
    fn regexes_are_named_by_one_run_compiled_by_the_next_and_loaded_after() {
        let code = source("regexes");
        let _ = CodeCacheSlot::for_task(&code);
        let mut second = CodeCacheSlot::for_task(&code);
        assert_eq!(second.ask(), WANTED);
        assert!(second.store(b"compiled", false));
        let records = record(b's', 0, b"[a-z]+");
        assert!(second.report_regexes(&records));
        assert!(!second.report_regexes(&records), "one report");

        let mut third = read_slot(&code);
        let wanted = [&b"W"[..], &records].concat();
        assert_eq!(third.ask_regexes(), wanted.len() as i32);
        assert_eq!(third.read_regexes().as_deref(), Some(&wanted[..]));
        assert!(third.store_regexes(b"handed", false));
        assert!(!third.store_regexes(b"again", false), "one store");

        for _ in 0..2 {
            let mut later = read_slot(&code);
            assert_eq!(later.ask_regexes(), 7);
            assert_eq!(later.read_regexes().as_deref(), Some(&b"Khanded"[..]));
            assert!(!later.store_regexes(b"poison", false));
            assert!(!later.report_regexes(&record(b's', 0, b"x")));
        }
    }

    #[test]
    fn only_the_driver_s_order_opens_the_regex_store_and_report() {
        let code = source("regex order");
        let _ = CodeCacheSlot::for_task(&code);
        let mut second = CodeCacheSlot::for_task(&code);
        // The regex question before the code's: nothing, and closed.
        assert_eq!(second.ask_regexes(), NOTHING);
        assert_eq!(second.ask(), NOTHING);
        let _ = CodeCacheSlot::for_task(&code);
        let mut second = CodeCacheSlot::for_task(&code);
        assert_eq!(second.ask(), WANTED);
        // A store of regexes where the code's is awaited: refused, closed.
        assert!(!second.store_regexes(b"early", false));
        assert!(!second.store(b"compiled", false));
        let _ = CodeCacheSlot::for_task(&code);
        let mut second = CodeCacheSlot::for_task(&code);
        assert_eq!(second.ask(), WANTED);
        assert!(second.store(b"compiled", false));
        // A report that is not records: refused, and the slot is closed.
        assert!(!second.report_regexes(b"not records"));
        assert!(!second.report_regexes(&record(b's', 0, b"x")));

        // Unreported still: the next run is asked to report; the regex
        // question comes once, right after the code was read.
        let mut slot = read_slot(&code);
        assert_eq!(slot.ask_regexes(), 1);
        assert_eq!(slot.ask_regexes(), NOTHING);
        let mut slot = read_slot(&code);
        assert_eq!(slot.ask_regexes(), 1);
        assert_eq!(slot.read_regexes().as_deref(), Some(&b"R"[..]));
        assert!(!slot.store_regexes(b"handed", false), "told R, not W");
        let mut slot = read_slot(&code);
        slot.ask_regexes();
        slot.read_regexes();
        // An empty report: nothing to compile, kept as such.
        assert!(slot.report_regexes(b""));
        let mut slot = read_slot(&code);
        slot.ask_regexes();
        assert_eq!(slot.read_regexes().as_deref(), Some(&b"K"[..]));

        // Something printed before the store of what patterns compiled to.
        let code = source("regex printed");
        let _ = CodeCacheSlot::for_task(&code);
        let mut slot = CodeCacheSlot::for_task(&code);
        slot.ask();
        slot.store(b"compiled", false);
        assert!(slot.report_regexes(&record(b'b', 2, b"[0-9]")));
        let mut slot = read_slot(&code);
        slot.ask_regexes();
        slot.read_regexes();
        assert!(!slot.store_regexes(b"handed", true));
        let mut slot = read_slot(&code);
        slot.ask_regexes();
        assert_eq!(slot.read_regexes().unwrap()[0], b'W', "still wanted");
    }

    #[test]
    fn a_regex_report_is_only_checked_records() {
        let good = record(b's', -1, "é[a-z]".as_bytes());
        assert!(check_records(b""));
        assert!(check_records(&good));
        assert!(check_records(
            &[good.clone(), record(b'b', 0, b"")].concat()
        ));
        assert!(!check_records(&record(b'x', 0, b"a")), "kind");
        assert!(!check_records(&good[..good.len() - 1]), "cut short");
        assert!(!check_records(&good[..5]), "cut in the head");
        assert!(check_records(&record(b's', 0, &[b'a'; MAX_PATTERN])));
        assert!(!check_records(&record(b's', 0, &[b'a'; MAX_PATTERN + 1])));
        let many = |n: usize| {
            (0..n)
                .flat_map(|_| record(b's', 0, b"a"))
                .collect::<Vec<_>>()
        };
        assert!(check_records(&many(MAX_PATTERNS)));
        assert!(!check_records(&many(MAX_PATTERNS + 1)));
    }

    /// The driver reports within the bounds the host checks: a larger
    /// report would be refused whole, a smaller one would keep less.
    #[test]
    fn the_driver_reports_within_the_hosts_bounds() {
        let driver = include_str!("../driver.py");
        for line in [
            format!("\n_MAX_REPORTED_REGEXES = {MAX_PATTERNS}\n"),
            format!("\n_MAX_REPORTED_PATTERN = {MAX_PATTERN}\n"),
        ] {
            assert!(driver.contains(&line), "driver.py lacks {line:?}");
        }
    }

    /// Through the real guest: the second run names the pattern its task
    /// compiled, the third compiles it before the task's code, the later
    /// ones load it; all answer alike.
    #[test]
    fn a_task_run_again_finds_its_patterns_compiled() {
        use crate::sandbox::{CancelToken, SandboxConfig, SandboxExecutor, SandboxLevel};
        use crate::task::TaskSubmission;
        let code = "import re\nKEPT = (str, '(?P<w>[a-z]+)', 2) in re._cache\n\n\
                    def f(x):\n    return [KEPT, re.findall('(?P<w>[a-z]+)', x, re.I)]\n";
        let sandbox = SandboxExecutor::new(SandboxConfig {
            tier: SandboxLevel::Wasm,
            ..SandboxConfig::default()
        });
        for run in 0..5 {
            let before = lock().regex_hits;
            let task = TaskSubmission::python(code).with_input(serde_json::json!("Ab, cD"));
            let outcome = sandbox.run(&task, &CancelToken::new());
            assert_eq!(
                outcome.result.expect("the task runs"),
                serde_json::json!([run >= 2, ["Ab", "cD"]]),
                "run {run}"
            );
            assert!(lock().regex_hits > before || run < 3, "run {run}");
        }
    }

    #[test]
    fn the_cache_keeps_within_its_bounds() {
        let big = "x".repeat(MAX_SOURCE + 1);
        assert!(matches!(
            CodeCacheSlot::for_task(&big),
            CodeCacheSlot::Closed
        ));
        assert!(matches!(
            CodeCacheSlot::for_task(&big),
            CodeCacheSlot::Closed
        ));
        let code = source("too big a result");
        let _ = CodeCacheSlot::for_task(&code);
        let mut slot = CodeCacheSlot::for_task(&code);
        slot.ask();
        assert!(!slot.store(&vec![0; MAX_COMPILED + 1], false));
        let mut cache = CodeCache::new();
        let total = |cache: &CodeCache| -> usize {
            cache
                .entries
                .iter()
                .map(|(source, entry)| source.len() + entry.compiled.len() + entry.regexes.size())
                .sum()
        };
        for i in 0..(MAX_BYTES / MAX_COMPILED + 8) {
            let filler: Arc<str> = source(&format!("filler {i}")).into();
            cache.insert(filler.clone(), vec![0; MAX_COMPILED / 2].into());
            let regexes = Regexes::Kept(vec![0; MAX_COMPILED / 2].into());
            cache.set_regexes(&filler, regexes);
            assert!(cache.bytes <= MAX_BYTES);
            assert_eq!(cache.bytes, total(&cache));
        }
        assert!(cache.entries.len() <= MAX_BYTES / MAX_COMPILED);
        assert_eq!(cache.entries.len(), cache.order.len());
        // A later state replaces an earlier one, never the reverse.
        let last: Arc<str> = source(&format!("filler {}", MAX_BYTES / MAX_COMPILED + 7)).into();
        cache.set_regexes(&last, Regexes::Wanted(Arc::from(&b"W"[..])));
        assert!(matches!(cache.entries[&last].regexes, Regexes::Kept(_)));
        assert_eq!(cache.bytes, total(&cache));
    }
}
