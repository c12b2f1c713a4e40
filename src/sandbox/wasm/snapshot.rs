//! A wasm session's state as bytes: the 4 KiB pages of its linear memory
//! that differ from the guest's base image (the pre-initialised snapshot
//! every instance starts from), LZ4-compressed, with the identity of the
//! guest they belong to and a checksum. Between calls the guest's whole
//! state is in its memory (its stack pointer is back at the top), and the
//! host keeps nothing of the session but its limits, so these bytes are
//! all a restore needs — and hold nothing of the host's.
//!
//! Layout (little-endian): `LATTSNAP`, format version (u32), the guest's
//! hash (u32 length, bytes), the memory's size (u64), the number of pages
//! (u32) and their indices (u32 each), the number of parts (u32) and each
//! part — its number of pages (u32) and those pages as one LZ4 block (u64
//! length, bytes) — then a checksum of everything before it (FNV-1a 64
//! over 8-byte words). Only the pages the process holds privately are
//! compared (the kernel's page map says which: ~0.2 ms for a 32 MB memory,
//! where comparing all of it took 2-4 ms), and the changed ones are
//! compressed on two threads, one part each.

use crate::task::TaskError;

const MAGIC: &[u8; 8] = b"LATTSNAP";
const VERSION: u32 = 2;
/// The unit of difference.
pub(super) const PAGE: usize = 4096;

/// A decoded snapshot.
pub(super) struct Snapshot {
    /// The linear memory's size in bytes.
    pub memory_len: usize,
    /// The indices of the pages that differ from the base image.
    pub indices: Vec<usize>,
    /// Their contents, one after the other.
    pub pages: Vec<u8>,
}

impl Snapshot {
    /// Each changed page: its index and contents.
    pub(super) fn pages(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.indices.iter().copied().zip(self.pages.chunks(PAGE))
    }
}

/// The pages of `memory` that differ from `base` (past its end, from
/// zero), encoded. Only the pages in `candidates` are compared (all of them
/// when `None`): the caller vouches that every other page equals `base`.
pub(super) fn encode(
    guest: &str,
    memory: &[u8],
    base: &[u8],
    candidates: Option<Vec<u32>>,
) -> Vec<u8> {
    let candidates =
        candidates.unwrap_or_else(|| (0..memory.len().div_ceil(PAGE) as u32).collect());
    // The candidates compared on two threads; then the changed pages (often
    // all in one half: the heap's new end) split evenly and compressed on
    // two.
    let (first, second) = candidates.split_at(candidates.len() / 2);
    let indices = in_two(
        || changed_pages(memory, base, first),
        || changed_pages(memory, base, second),
    );
    let indices: Vec<u32> = indices.0.into_iter().chain(indices.1).collect();
    let (first, second) = indices.split_at(indices.len() / 2);
    let parts = in_two(|| compress(memory, first), || compress(memory, second));
    let mut out = Vec::with_capacity(parts.0.len() + parts.1.len() + indices.len() * 4 + 96);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(guest.len() as u32).to_le_bytes());
    out.extend_from_slice(guest.as_bytes());
    out.extend_from_slice(&(memory.len() as u64).to_le_bytes());
    out.extend_from_slice(&(indices.len() as u32).to_le_bytes());
    for index in &indices {
        out.extend_from_slice(&index.to_le_bytes());
    }
    out.extend_from_slice(&2u32.to_le_bytes());
    for (in_part, compressed) in [(first.len(), &parts.0), (second.len(), &parts.1)] {
        out.extend_from_slice(&(in_part as u32).to_le_bytes());
        out.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
        out.extend_from_slice(compressed);
    }
    let checksum = checksum(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out
}

/// `a` here and `b` on a thread of its own, at once.
fn in_two<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|scope| {
        let b = scope.spawn(b);
        let a = a();
        match b.join() {
            Ok(b) => (a, b),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Which of the pages `candidates` of `memory` differ from `base`.
fn changed_pages(memory: &[u8], base: &[u8], candidates: &[u32]) -> Vec<u32> {
    let zero = [0u8; PAGE];
    candidates
        .iter()
        .copied()
        .filter(|&index| {
            let start = index as usize * PAGE;
            let page = &memory[start..(start + PAGE).min(memory.len())];
            let original = base
                .get(start..start + page.len())
                .unwrap_or(&zero[..page.len()]);
            page != original
        })
        .collect()
}

/// The pages of `memory` (page-aligned) that this process holds privately:
/// present and not the page cache's (written: copied on write, or zeros
/// first touched), or swapped out. Every other page still reads as what it
/// was mapped from. For a guest's linear memory that is the module's
/// copy-on-write image or zeros, which is what the base image reads; so
/// only these pages can differ from it. `None` when the kernel's page map
/// can't say (no /proc, or one that does not report pages as present).
pub(super) fn private_pages(memory: &[u8]) -> Option<Vec<u32>> {
    use std::os::unix::fs::FileExt;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE_OR_SHARED: u64 = 1 << 61;
    static TRUSTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let page_map = std::fs::File::open("/proc/self/pagemap").ok()?;
    let entries = |start: usize, pages: usize| -> Option<Vec<u64>> {
        let mut bytes = vec![0u8; pages * 8];
        page_map
            .read_exact_at(&mut bytes, (start / PAGE * 8) as u64)
            .ok()?;
        Some(
            bytes
                .chunks_exact(8)
                .map(|entry| u64::from_le_bytes(entry.try_into().expect("8 bytes")))
                .collect(),
        )
    };
    let private = |entry: u64| entry & PRESENT != 0 && entry & FILE_OR_SHARED == 0;
    // Once: a page just written must show as private (an emulated /proc
    // that reports nothing would otherwise make every snapshot empty).
    let trusted = *TRUSTED.get_or_init(|| {
        let mut probe = vec![0u8; 2 * PAGE];
        let at = probe.as_ptr() as usize;
        let offset = at.next_multiple_of(PAGE) - at;
        // SAFETY: `offset < PAGE`, so the byte is inside `probe`; the
        // volatile write keeps it from being optimised away.
        unsafe { std::ptr::write_volatile(probe.as_mut_ptr().add(offset), 1) };
        entries(at + offset, 1).is_some_and(|entry| private(entry[0]))
    });
    let start = memory.as_ptr() as usize;
    if !trusted || !start.is_multiple_of(PAGE) {
        return None;
    }
    let pages = memory.len().div_ceil(PAGE);
    Some(
        entries(start, pages)?
            .into_iter()
            .enumerate()
            .filter(|&(_, entry)| private(entry) || entry & SWAPPED != 0)
            .map(|(index, _)| index as u32)
            .collect(),
    )
}

/// The pages `indices` of `memory`, one after the other, as one LZ4 block.
fn compress(memory: &[u8], indices: &[u32]) -> Vec<u8> {
    // Buffers kept between snapshots: fresh ones cost a page fault per 4 KiB
    // (~1 ms of a 3 MB snapshot here).
    let mut scratch = Scratch::take();
    let (pages, block) = (&mut scratch.0 .0, &mut scratch.0 .1);
    pages.clear();
    for &index in indices {
        let start = index as usize * PAGE;
        let page = &memory[start..(start + PAGE).min(memory.len())];
        pages.extend_from_slice(page);
        // A last, partial page is padded (memory sizes are whole Wasm pages).
        pages.resize(pages.len().next_multiple_of(PAGE), 0);
    }
    block.resize(lz4_flex::block::get_maximum_output_size(pages.len()), 0);
    let written = lz4_flex::block::compress_into(pages, block)
        .expect("the output has the maximum size a block can take");
    block[..written].to_vec()
}

/// A pair of buffers (pages, their compressed block) from a small pool.
struct Scratch((Vec<u8>, Vec<u8>));

/// The most a kept pair may hold; bigger ones are freed after use.
const SCRATCH_KEPT: usize = 64 << 20;

static SCRATCH: std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());

impl Scratch {
    fn take() -> Scratch {
        let pool = SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Scratch(pool.unwrap_or_default())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut pool = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
        // Two pairs at most (one snapshot's two halves), of a usual size.
        let kept = self.0 .0.capacity() + self.0 .1.capacity();
        if pool.len() < 2 && kept <= SCRATCH_KEPT {
            pool.push(std::mem::take(&mut self.0));
        }
    }
}

/// Decodes `bytes`, made by the guest `guest`, for a memory of at most
/// `max_memory` bytes. Whatever is wrong with them is an `invalid_task`
/// error saying what.
pub(super) fn decode(bytes: &[u8], guest: &str, max_memory: usize) -> Result<Snapshot, TaskError> {
    let invalid = |what: &str| TaskError::InvalidTask {
        type_name: "InvalidSnapshot".into(),
        message: format!("not a usable session snapshot: {what}"),
    };
    if bytes.len() < MAGIC.len() + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(invalid("it does not start as one"));
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 8);
    if self::checksum(body).to_le_bytes() != checksum {
        return Err(invalid(
            "its checksum does not match (it is corrupted or cut short)",
        ));
    }
    let mut reader = Reader {
        bytes: &body[MAGIC.len()..],
    };
    let truncated = || invalid("it is cut short");
    let version = reader.u32().ok_or_else(truncated)?;
    if version != VERSION {
        return Err(invalid(&format!(
            "format version {version}, this build reads {VERSION}"
        )));
    }
    let guest_len = reader.u32().ok_or_else(truncated)? as usize;
    let made_by = reader.take(guest_len).ok_or_else(truncated)?;
    if made_by != guest.as_bytes() {
        return Err(invalid(
            "it was made by another build of the Python guest (restore it with the lattice-wasm build that made it)",
        ));
    }
    let memory_len = usize::try_from(reader.u64().ok_or_else(truncated)?)
        .map_err(|_| invalid("its memory size is out of range"))?;
    if memory_len > max_memory {
        return Err(TaskError::memory_limit(
            (max_memory >> 20) as u64,
            &format!(
                "the snapshot's memory is {} MiB, more than the session may have",
                memory_len >> 20
            ),
        ));
    }
    let count = reader.u32().ok_or_else(truncated)? as usize;
    if count > memory_len.div_ceil(PAGE) {
        return Err(invalid("it lists more pages than its memory has"));
    }
    let mut indices = Vec::with_capacity(count);
    for _ in 0..count {
        let index = reader.u32().ok_or_else(truncated)? as usize;
        if index * PAGE >= memory_len || indices.last().is_some_and(|&last| last >= index) {
            return Err(invalid("its page list is out of order or out of range"));
        }
        indices.push(index);
    }
    let parts = reader.u32().ok_or_else(truncated)? as usize;
    let mut pages = vec![0u8; count * PAGE];
    let mut filled = 0;
    for _ in 0..parts {
        let in_part = reader.u32().ok_or_else(truncated)? as usize;
        if in_part > count - filled {
            return Err(invalid("its parts hold more pages than it lists"));
        }
        let compressed_len = usize::try_from(reader.u64().ok_or_else(truncated)?)
            .map_err(|_| invalid("its length is out of range"))?;
        let compressed = reader.take(compressed_len).ok_or_else(truncated)?;
        let part = &mut pages[filled * PAGE..(filled + in_part) * PAGE];
        let written = lz4_flex::block::decompress_into(compressed, part)
            .map_err(|e| invalid(&format!("its pages do not decompress ({e})")))?;
        if written != part.len() {
            return Err(invalid("its pages decompress to the wrong size"));
        }
        filled += in_part;
    }
    if filled != count {
        return Err(invalid("its parts hold fewer pages than it lists"));
    }
    if !reader.bytes.is_empty() {
        return Err(invalid("it has bytes after its end"));
    }
    Ok(Snapshot {
        memory_len,
        indices,
        pages,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(taken)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// FNV-1a 64 over 8-byte words (then the last bytes one by one): eight
/// times fewer multiplications than bytewise, on the megabytes of a
/// snapshot.
fn checksum(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut words = bytes.chunks_exact(8);
    let hash = words.by_ref().fold(0xcbf2_9ce4_8422_2325, |hash, word| {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        (hash ^ word).wrapping_mul(PRIME)
    });
    words
        .remainder()
        .iter()
        .fold(hash, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_pages_travel_and_come_back() {
        let base = vec![7u8; 10 * PAGE];
        let mut memory = base.clone();
        memory.resize(12 * PAGE, 0);
        memory[3 * PAGE + 5] = 1;
        memory[11 * PAGE] = 2;
        let bytes = encode("g", &memory, &base, None);
        let snapshot = decode(&bytes, "g", 1 << 30).unwrap();
        assert_eq!(snapshot.memory_len, memory.len());
        assert_eq!(snapshot.indices, vec![3, 11]);
        let first = snapshot.pages().next().unwrap();
        assert_eq!(first, (3, &memory[3 * PAGE..4 * PAGE]));
    }

    #[test]
    fn memories_of_one_page_or_none_round_trip() {
        for pages in [0, 1, 3] {
            let base = vec![1u8; PAGE];
            let memory = vec![2u8; pages * PAGE];
            let snapshot = decode(&encode("g", &memory, &base, None), "g", 1 << 30).unwrap();
            assert_eq!(snapshot.indices, (0..pages).collect::<Vec<_>>());
            assert!(snapshot.pages().all(|(_, page)| page == &[2u8; PAGE][..]));
        }
    }

    #[test]
    fn only_written_pages_are_candidates() {
        // Four fresh anonymous pages; the second written, the fourth read.
        // SAFETY: a private anonymous mapping of our own, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        // SAFETY: the mapping is 4 pages long, readable and writable.
        let memory = unsafe { std::slice::from_raw_parts_mut(map.cast::<u8>(), 4 * PAGE) };
        memory[PAGE + 7] = 1;
        assert_eq!(std::hint::black_box(memory[3 * PAGE]), 0);
        let candidates = private_pages(memory);
        let base = vec![0u8; 4 * PAGE];
        let bytes = encode("g", memory, &base, candidates.clone());
        // SAFETY: unmapping the mapping made above, no longer borrowed.
        unsafe { libc::munmap(map, 4 * PAGE) };
        // The zero page the read mapped may count as private: it is
        // compared, and equal.
        let candidates = candidates.expect("this kernel's page map is readable");
        assert!(candidates.contains(&1) && !candidates.contains(&0) && !candidates.contains(&2));
        assert_eq!(decode(&bytes, "g", 1 << 30).unwrap().indices, vec![1]);
    }

    #[test]
    fn corrupted_foreign_or_oversized_snapshots_are_typed_errors() {
        let base = vec![0u8; 4 * PAGE];
        let mut memory = base.clone();
        memory[PAGE] = 9;
        let bytes = encode("g", &memory, &base, None);
        for bad in [
            Vec::new(),
            b"LATTSNAP".to_vec(),
            bytes[..bytes.len() - 1].to_vec(),
            {
                let mut flipped = bytes.clone();
                flipped[20] ^= 1;
                flipped
            },
        ] {
            assert_eq!(
                decode(&bad, "g", 1 << 30).err().map(|e| e.kind()),
                Some(crate::task::ErrorKind::InvalidTask)
            );
        }
        let foreign = decode(&bytes, "other", 1 << 30).err().unwrap();
        assert!(foreign.to_string().contains("another build"), "{foreign}");
        let big = decode(&bytes, "g", PAGE).err().unwrap();
        assert_eq!(big.kind(), crate::task::ErrorKind::MemoryLimit);
    }
}
