//! Peak resident memory of a phase of the benchmark: this process (for
//! the in-process tiers) plus the processes it started (for the process
//! tiers), above what was resident when the phase began.
//!
//! This process: `VmHWM` after resetting it through `/proc/self/clear_refs`,
//! so a peak between samples is not missed. Children: their `VmRSS`,
//! sampled every few milliseconds from a thread, since the kernel keeps no
//! high-water mark over a process tree. A child that was forked but has not
//! exec'd yet (or a forked helper that never will) still maps this whole
//! process and would count it again, so only children running another
//! program count.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the children are sampled: process-tier tasks live ~40 ms.
const SAMPLE_EVERY: Duration = Duration::from_millis(4);

/// Samples memory from `start` to `finish`.
pub(super) struct MemoryProbe {
    baseline: u64,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<u64>>,
}

impl MemoryProbe {
    pub(super) fn start() -> MemoryProbe {
        reset_high_water_mark();
        let own_exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
        let baseline = resident_total(&own_exe);
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("bench-memory".into())
                .spawn(move || sample_until(&stop, &own_exe))
                .ok()
        };
        MemoryProbe {
            baseline,
            stop,
            sampler,
        }
    }

    /// The peak above the baseline, in bytes.
    pub(super) fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self
            .sampler
            .take()
            .and_then(|sampler| sampler.join().ok())
            .unwrap_or(0);
        let own_peak = own_status_bytes("VmHWM:").unwrap_or(0);
        sampled.max(own_peak).saturating_sub(self.baseline)
    }
}

impl Drop for MemoryProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sample_until(stop: &AtomicBool, own_exe: &Path) -> u64 {
    let mut peak = 0;
    while !stop.load(Ordering::Relaxed) {
        peak = peak.max(resident_total(own_exe));
        std::thread::sleep(SAMPLE_EVERY);
    }
    peak
}

/// This process's resident bytes plus those of its exec'd descendants.
fn resident_total(own_exe: &Path) -> u64 {
    let own = own_resident();
    let children: u64 = descendants()
        .into_iter()
        .filter(|pid| runs_other_program(*pid, own_exe))
        .filter_map(|pid| status_bytes(&format!("/proc/{pid}/status"), "VmRSS:"))
        .sum();
    own + children
}

/// Every process started by this one or by its descendants.
fn descendants() -> Vec<u32> {
    let mut found = Vec::new();
    let mut pending = crate::cli::children_of("self");
    while let Some(pid) = pending.pop() {
        pending.extend(crate::cli::children_of(&pid.to_string()));
        found.push(pid);
    }
    found
}

fn runs_other_program(pid: u32, own_exe: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.as_path() != own_exe)
}

/// Resets this process's `VmHWM` to its current `VmRSS`.
fn reset_high_water_mark() {
    // Unavailable (an old kernel, a locked-down /proc): the sampled peak
    // stands in, and may miss a short spike.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's resident bytes now.
pub(super) fn own_resident() -> u64 {
    own_status_bytes("VmRSS:").unwrap_or(0)
}

fn own_status_bytes(field: &str) -> Option<u64> {
    status_bytes("/proc/self/status", field)
}

/// A `kB` field of a `/proc/<pid>/status` file, in bytes.
fn status_bytes(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|line| line.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_child_and_this_process() {
        let probe = MemoryProbe::start();
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let held = vec![1u8; 32 << 20];
        std::thread::sleep(Duration::from_millis(100));
        let peak = probe.finish();
        child.wait().unwrap();
        assert_eq!(held.iter().map(|&b| b as usize).sum::<usize>(), 32 << 20);
        assert!(peak >= 30 << 20, "peak {peak}");
    }
}
