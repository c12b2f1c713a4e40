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
//! (u32) and their indices (u32 each), the compressed pages (u64 length,
//! LZ4 block), an FNV-1a 64 checksum of everything before it.

use crate::task::TaskError;

const MAGIC: &[u8; 8] = b"LATTSNAP";
const VERSION: u32 = 1;
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
/// zero), encoded.
pub(super) fn encode(guest: &str, memory: &[u8], base: &[u8]) -> Vec<u8> {
    let zero = [0u8; PAGE];
    let mut indices: Vec<u32> = Vec::new();
    let mut pages: Vec<u8> = Vec::new();
    for (index, page) in memory.chunks(PAGE).enumerate() {
        let start = index * PAGE;
        let original = base
            .get(start..start + page.len())
            .unwrap_or(&zero[..page.len()]);
        if page != original {
            indices.push(index as u32);
            pages.extend_from_slice(page);
            // A last, partial page is padded (memory sizes are whole Wasm pages).
            pages.resize(indices.len() * PAGE, 0);
        }
    }
    let compressed = lz4_flex::block::compress(&pages);
    let mut out = Vec::with_capacity(compressed.len() + indices.len() * 4 + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(guest.len() as u32).to_le_bytes());
    out.extend_from_slice(guest.as_bytes());
    out.extend_from_slice(&(memory.len() as u64).to_le_bytes());
    out.extend_from_slice(&(indices.len() as u32).to_le_bytes());
    for index in &indices {
        out.extend_from_slice(&index.to_le_bytes());
    }
    out.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
    out.extend_from_slice(&compressed);
    let checksum = fnv1a(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out
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
    if fnv1a(body).to_le_bytes() != checksum {
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
    let compressed_len = usize::try_from(reader.u64().ok_or_else(truncated)?)
        .map_err(|_| invalid("its length is out of range"))?;
    let compressed = reader.take(compressed_len).ok_or_else(truncated)?;
    if !reader.bytes.is_empty() {
        return Err(invalid("it has bytes after its end"));
    }
    let mut pages = vec![0u8; count * PAGE];
    let written = lz4_flex::block::decompress_into(compressed, &mut pages)
        .map_err(|e| invalid(&format!("its pages do not decompress ({e})")))?;
    if written != pages.len() {
        return Err(invalid("its pages decompress to the wrong size"));
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

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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
        let bytes = encode("g", &memory, &base);
        let snapshot = decode(&bytes, "g", 1 << 30).unwrap();
        assert_eq!(snapshot.memory_len, memory.len());
        assert_eq!(snapshot.indices, vec![3, 11]);
        let first = snapshot.pages().next().unwrap();
        assert_eq!(first, (3, &memory[3 * PAGE..4 * PAGE]));
    }

    #[test]
    fn corrupted_foreign_or_oversized_snapshots_are_typed_errors() {
        let base = vec![0u8; 4 * PAGE];
        let mut memory = base.clone();
        memory[PAGE] = 9;
        let bytes = encode("g", &memory, &base);
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
