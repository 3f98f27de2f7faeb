//! Decodes every ferry-crdt state type from arbitrary bytes.
//!
//! Decoding must return a value or an error, never panic or allocate past its limit; a value it
//! returns must re-encode canonically, decode again to itself, and merge with itself unchanged.
//!
//! `cargo +nightly fuzz run decode_crdt` from the repository root (see `fuzz/README.md`).

#![no_main]

use ferry_crdt::{Crdt, GCounter, LwwRegister, MvRegister, PNCounter};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

fn check<T: Crdt + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(state) = T::decode(bytes, LIMIT) else {
        return;
    };
    let encoded = state.encode().expect("a decoded state encodes");
    let again = T::decode(&encoded, LIMIT).expect("a canonical encoding decodes");
    assert_eq!(again, state, "decode(encode(x)) != x");
    let mut merged = state.clone();
    assert!(!merged.merge(&state), "merging a state with itself changed it");
    assert_eq!(merged, state);
}

fuzz_target!(|bytes: &[u8]| {
    check::<GCounter>(bytes);
    check::<PNCounter>(bytes);
    check::<LwwRegister<String>>(bytes);
    check::<LwwRegister<Vec<u64>>>(bytes);
    check::<MvRegister<String>>(bytes);
    check::<MvRegister<Vec<u8>>>(bytes);
});
