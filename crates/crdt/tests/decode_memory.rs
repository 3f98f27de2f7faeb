//! Decoding untrusted bytes stays within its limit: a counting allocator records the peak of
//! live heap bytes while decoding forged and random inputs.
//!
//! One test function only, so no other test allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_crdt::{GCounter, LwwRegister, MvRegister, PNCounter, ReplicaId, decode, encode};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LIMIT: usize = 16 * 1024;

/// The most heap a decode under `LIMIT` used above what was live before it.
fn peak_while(decode: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    decode();
    PEAK.load(Ordering::SeqCst) - base
}

/// The peak for ferry's own types and string values, and for a value type holding a sequence.
fn worst_of(bytes: &[u8]) -> (usize, usize) {
    let own = [
        peak_while(|| drop(decode::<GCounter>(bytes, LIMIT))),
        peak_while(|| drop(decode::<PNCounter>(bytes, LIMIT))),
        peak_while(|| drop(decode::<LwwRegister<String>>(bytes, LIMIT))),
        peak_while(|| drop(decode::<MvRegister<String>>(bytes, LIMIT))),
    ];
    let sequence = peak_while(|| drop(decode::<LwwRegister<Vec<u64>>>(bytes, LIMIT)));
    (own.into_iter().max().unwrap_or(0), sequence)
}

/// A varint length prefix claiming `len` items (bincode: 253 then a little-endian u64).
fn claims(len: u64) -> Vec<u8> {
    let mut bytes = vec![253];
    bytes.extend(len.to_le_bytes());
    bytes
}

#[test]
fn decoding_stays_within_its_limit() {
    let mut inputs: Vec<Vec<u8>> = Vec::new();

    // Length prefixes that claim far more than the input holds.
    for len in [1u64 << 20, 1 << 40, u64::MAX] {
        inputs.push(claims(len)); // a map of that many slots
        let mut lww = vec![1u8];
        lww.extend(encode(&(5u64, 0u32, [9u8; 16])).unwrap());
        lww.extend(claims(len)); // a string or sequence of that length
        inputs.push(lww);
    }

    // Real states as large as the limit allows: a counter with as many slots as fit.
    let mut counter = GCounter::new();
    for i in 0..(LIMIT / 26) as u64 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_le_bytes());
        counter
            .increment(ReplicaId::from_bytes(id), u64::MAX)
            .unwrap();
    }
    let full = encode(&counter).unwrap();
    assert!(full.len() <= LIMIT, "{}", full.len());
    inputs.push(full);

    // Pseudo-random bytes (a fixed xorshift sequence, so a failure replays).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2_000 {
        let len = (x % 600) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        inputs.push(bytes);
    }

    let (mut own, mut sequence) = (0, 0);
    for bytes in &inputs {
        let (o, s) = worst_of(bytes);
        own = own.max(o);
        sequence = sequence.max(s);
    }
    println!(
        "peak heap under a {LIMIT}-byte limit: {own} bytes (ferry types), {sequence} (Vec value)"
    );
    // Decoded data is counted against the limit; ordered-map nodes add their own overhead.
    assert!(
        own <= 2 * LIMIT,
        "decoding used {own} bytes under a limit of {LIMIT}"
    );
    // serde reserves up to 1 MiB ahead for a sequence whose length it is told (`decode`'s docs).
    assert!(
        sequence <= 2 * LIMIT + (1 << 20),
        "decoding used {sequence} bytes"
    );
}
