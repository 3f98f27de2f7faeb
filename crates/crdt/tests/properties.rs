//! Property tests for ferry-crdt: the merge laws, convergence of random replica histories,
//! delta merging, encoding and bounded decoding, and the hybrid clock.
//!
//! Case counts follow proptest's defaults (256) and honour `PROPTEST_CASES`; CI lowers them,
//! a soak raises them: `PROPTEST_CASES=20000 cargo test -p ferry-crdt --release --test properties`.

mod properties {
    mod clock;
    mod codec;
    mod convergence;
    mod laws;
    pub(crate) mod sim;
}
