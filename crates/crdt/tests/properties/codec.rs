//! Encoding round-trips, digests, and decoding of untrusted bytes.

use ferry_crdt::{
    Crdt, DecodeError, GCounter, LwwRegister, MvRegister, PNCounter, ReplicaId, decode, encode,
};
use proptest::prelude::*;

use super::sim::{Sim, Step, Subject, steps};

const LIMIT: usize = 64 * 1024;

fn roundtrip<T: Subject>(n: usize, steps: &[Step<T::Param>]) -> Result<(), TestCaseError> {
    let mut sim = Sim::<T>::new(n);
    sim.run(steps)?;
    let states: Vec<T> = sim
        .replicas
        .iter()
        .cloned()
        .chain(sim.writes.iter().map(|w| w.delta.clone()))
        .collect();
    for state in &states {
        let bytes = state.encode().expect("encodes");
        prop_assert_eq!(&T::decode(&bytes, LIMIT).expect("decodes"), state);
        if !bytes.is_empty() {
            let short = T::decode(&bytes, bytes.len() - 1);
            prop_assert!(
                matches!(short, Err(DecodeError::TooLong { .. })),
                "{:?}",
                short
            );
            prop_assert!(
                T::decode(&bytes[..bytes.len() - 1], LIMIT).is_err(),
                "truncated decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let trailing = T::decode(&longer, LIMIT);
        let refused = matches!(trailing, Err(DecodeError::TrailingBytes { count: 1 }));
        prop_assert!(refused, "{:?}", trailing);
    }
    // Equal digests exactly when equal states.
    for x in &states {
        for y in &states {
            prop_assert_eq!(
                x == y,
                x.digest().expect("encodes") == y.digest().expect("encodes")
            );
        }
    }
    Ok(())
}

/// Decoding anything returns a value or an error; a value it returns re-encodes to the input.
fn never_panics<T: Crdt + std::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(state) = T::decode(bytes, LIMIT) {
        let again = state.encode().expect("encodes");
        let back = T::decode(&again, LIMIT).expect("canonical bytes decode");
        prop_assert_eq!(back, state);
    }
    Ok(())
}

fn history<T: Subject + 'static>() -> impl Strategy<Value = (usize, Vec<Step<T::Param>>)> {
    (2..=5usize, steps(T::param()))
}

proptest! {
    #[test]
    fn gcounter_roundtrips((n, steps) in history::<GCounter>()) {
        roundtrip::<GCounter>(n, &steps)?;
    }

    #[test]
    fn pncounter_roundtrips((n, steps) in history::<PNCounter>()) {
        roundtrip::<PNCounter>(n, &steps)?;
    }

    #[test]
    fn lww_register_roundtrips((n, steps) in history::<LwwRegister<String>>()) {
        roundtrip::<LwwRegister<String>>(n, &steps)?;
    }

    #[test]
    fn mv_register_roundtrips((n, steps) in history::<MvRegister<String>>()) {
        roundtrip::<MvRegister<String>>(n, &steps)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        never_panics::<GCounter>(&bytes)?;
        never_panics::<PNCounter>(&bytes)?;
        never_panics::<LwwRegister<String>>(&bytes)?;
        never_panics::<LwwRegister<Vec<u64>>>(&bytes)?;
        never_panics::<MvRegister<String>>(&bytes)?;
    }

    #[test]
    fn damaged_encodings_never_panic(
        (n, steps) in history::<MvRegister<String>>(),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut sim = Sim::<MvRegister<String>>::new(n);
        sim.run(&steps)?;
        let mut bytes = encode(&sim.replicas[0]).expect("encodes");
        for (at, byte) in flips {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
        never_panics::<MvRegister<String>>(&bytes)?;
    }

    #[test]
    fn replica_ids_roundtrip_as_text(bytes in any::<[u8; 16]>()) {
        let id = ReplicaId::from_bytes(bytes);
        let text = id.to_string();
        prop_assert_eq!(text.len(), 26);
        prop_assert_eq!(text.parse::<ReplicaId>().expect("parses"), id);
        prop_assert_eq!(text.to_uppercase().parse::<ReplicaId>().expect("parses"), id);
    }
}

#[test]
fn a_forged_string_length_is_refused_before_allocating() {
    // An LWW register holding a string whose length prefix claims 2^40 bytes.
    let mut bytes = vec![1u8]; // Some
    bytes.extend(encode(&(5u64, 0u32, [9u8; 16])).expect("encodes"));
    bytes.push(253); // varint marker: a u64 follows
    bytes.extend((1u64 << 40).to_le_bytes());
    let err = decode::<LwwRegister<String>>(&bytes, 4096).unwrap_err();
    assert!(
        matches!(err, DecodeError::LimitExceeded { limit: 4096 }),
        "{err:?}"
    );
}

#[test]
fn states_that_break_invariants_are_refused() {
    let a = ReplicaId::from_bytes([1; 16]);
    // A counter slot of zero would give one state two encodings.
    let zero_slot = encode(&std::collections::BTreeMap::from([(a, 0u64)])).expect("encodes");
    assert!(matches!(
        decode::<GCounter>(&zero_slot, LIMIT),
        Err(DecodeError::Malformed(_))
    ));

    // A multi-value write its own version vector has not seen.
    #[derive(serde::Serialize)]
    struct Raw {
        entries: std::collections::BTreeMap<(ReplicaId, u64), String>,
        context: std::collections::BTreeMap<ReplicaId, u64>,
    }
    let uncovered = Raw {
        entries: [((a, 3), "x".to_string())].into(),
        context: [(a, 2)].into(),
    };
    let bytes = encode(&uncovered).expect("encodes");
    assert!(matches!(
        decode::<MvRegister<String>>(&bytes, LIMIT),
        Err(DecodeError::Malformed(_))
    ));

    // Two surviving writes of one replica.
    let twice = Raw {
        entries: [((a, 1), "x".to_string()), ((a, 2), "y".to_string())].into(),
        context: [(a, 2)].into(),
    };
    let bytes = encode(&twice).expect("encodes");
    assert!(matches!(
        decode::<MvRegister<String>>(&bytes, LIMIT),
        Err(DecodeError::Malformed(_))
    ));

    // The same shape, well-formed, decodes: the refusals above are about the invariants.
    let fine = Raw {
        entries: [((a, 2), "y".to_string())].into(),
        context: [(a, 2)].into(),
    };
    let bytes = encode(&fine).expect("encodes");
    let register = decode::<MvRegister<String>>(&bytes, LIMIT).expect("decodes");
    assert_eq!(register.values(), ["y"]);
}
