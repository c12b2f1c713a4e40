//! Compiled task code, kept across tasks by the exact text of its source.
//!
//! Evaluation and RL loops run the same code with many inputs, and every
//! task is a fresh instance that would compile it again (~0.05 ms for two
//! lines, ~0.18 ms for a dozen, on a fresh copy of the snapshot). The
//! driver instead loads the code object the first such task compiled
//! (`marshal`, ~0.02–0.03 ms).
//!
//! The compiled form comes from the guest, so who may store it is the whole
//! design:
//! - only a one-shot task whose driver compiles its code as a module first
//!   thing ([`CodeCacheSlot::for_task`]; not script mode, not sessions, not
//!   Wasm payloads), and only once per instance: the first question the
//!   guest asks closes the slot, and a store is taken only right after the
//!   driver was told "wanted". The driver asks before it compiles, and
//!   stores before any of the task's code runs, so the task can't reach an
//!   open slot, even through introspection;
//! - what is stored is filed under the task's own source, which the host
//!   knows, never under a source the guest names; a task can neither read
//!   nor write another source's entry;
//! - nothing was printed before the store: a compile that warned
//!   (`SyntaxWarning`) is not kept, so that every run prints its warning.
//!
//! The host never compiles, nor reads what it keeps: the bytes only ever go
//! back into a guest, where the sandbox holds whatever they are. A source is
//! kept from its second run on, so a stream of distinct sources costs a hash
//! each and no copy.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock};

/// Largest source kept, in bytes.
const MAX_SOURCE: usize = 256 << 10;
/// Largest compiled form kept, in bytes.
const MAX_COMPILED: usize = 1 << 20;
/// What the cache holds at most, sources and compiled forms together.
const MAX_BYTES: usize = 32 << 20;
/// Sources remembered as seen once (hashes), before that set starts over.
const MAX_SEEN: usize = 1 << 14;

/// The process's cache (the wasm tier has one Python guest per process).
struct CodeCache {
    /// Compiled forms by source.
    entries: HashMap<Arc<str>, Arc<[u8]>>,
    /// Sources in the order they were kept: the oldest goes first.
    order: VecDeque<Arc<str>>,
    bytes: usize,
    /// Hashes of sources seen once and not kept yet.
    seen: HashSet<u64>,
    hasher: RandomState,
    /// Tasks handed a kept compile (for tests).
    #[cfg(test)]
    hits: u64,
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
        }
    }

    fn insert(&mut self, source: Arc<str>, compiled: Arc<[u8]>) {
        let size = source.len() + compiled.len();
        if self.entries.contains_key(&source) {
            return;
        }
        while self.bytes + size > MAX_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.entries.remove(&oldest) {
                self.bytes -= oldest.len() + gone.len();
            }
        }
        self.bytes += size;
        self.order.push_back(source.clone());
        self.entries.insert(source, compiled);
    }
}

/// One task's access to the cache, held by its store.
#[derive(Debug, Default)]
pub(super) enum CodeCacheSlot {
    /// Nothing to read, nothing may be stored.
    #[default]
    Closed,
    /// The compiled form of the task's source, until the guest asks.
    Hit(Arc<[u8]>),
    /// The guest was told its length; it reads it next.
    Reading(Arc<[u8]>),
    /// The source ran before: its compiled form is wanted, once the guest
    /// asks.
    Wanted(Arc<str>),
    /// The guest asked and was told "wanted": its next call may store.
    Storing(Arc<str>),
}

/// What the guest's first question gets (`lattice.code_cache_len`).
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
        if let Some(compiled) = cache.entries.get(source).cloned() {
            #[cfg(test)]
            {
                cache.hits += 1;
            }
            return CodeCacheSlot::Hit(compiled);
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
            CodeCacheSlot::Hit(compiled) => {
                let len = compiled.len() as i32;
                *self = CodeCacheSlot::Reading(compiled);
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
            CodeCacheSlot::Reading(compiled) => Some(compiled),
            _ => None,
        }
    }

    /// Keeps `compiled` for the task's source, if this is the store the
    /// slot waits for and nothing was printed before it. Whatever the
    /// answer, the slot is closed after.
    pub(super) fn store(&mut self, compiled: &[u8], printed: bool) -> bool {
        let CodeCacheSlot::Storing(source) = std::mem::take(self) else {
            return false;
        };
        if printed || compiled.is_empty() || compiled.len() > MAX_COMPILED {
            return false;
        }
        lock().insert(source, compiled.into());
        true
    }
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
        for i in 0..(MAX_BYTES / MAX_COMPILED + 8) {
            cache.insert(
                source(&format!("filler {i}")).into(),
                vec![0; MAX_COMPILED].into(),
            );
            assert!(cache.bytes <= MAX_BYTES);
        }
        assert!(cache.entries.len() <= MAX_BYTES / MAX_COMPILED);
        assert_eq!(cache.entries.len(), cache.order.len());
    }
}
