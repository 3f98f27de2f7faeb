//! `Store::unacked` answers what a walk over every document the peer may read answers: random
//! creations, edits, acknowledgements, deletes and grant changes, with the question asked at
//! random moments in between (so the index is kept across them) and at the end.
//!
//! `FERRY_STORE_CASES` sets the number of cases (default 64, which CI runs).

#![allow(clippy::unwrap_used)]

use automerge::ROOT;
use automerge::transaction::Transactable;
use ferry_store::{Access, DocId, DocKind, PeerId, PeerInfo, SpaceId, Store, SyncUpdate};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Create {
        space: usize,
        automerge: bool,
    },
    Edit {
        doc: usize,
    },
    /// The peer acknowledges the document's version as it is now.
    Ack {
        doc: usize,
    },
    /// The peer acknowledges an older version: the heads before the last edit.
    AckOld {
        doc: usize,
    },
    Delete {
        doc: usize,
    },
    Grant {
        space: usize,
        access: Access,
    },
    Ask,
}

const SPACES: [SpaceId; 2] = [SpaceId::DEFAULT, SpaceId::from_bytes([7; 16])];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, any::<bool>()).prop_map(|(space, automerge)| Op::Create { space, automerge }),
        4 => any::<usize>().prop_map(|doc| Op::Edit { doc }),
        4 => any::<usize>().prop_map(|doc| Op::Ack { doc }),
        1 => any::<usize>().prop_map(|doc| Op::AckOld { doc }),
        1 => any::<usize>().prop_map(|doc| Op::Delete { doc }),
        1 => (0..2usize, prop_oneof![Just(Access::None), Just(Access::Read), Just(Access::ReadWrite)])
            .prop_map(|(space, access)| Op::Grant { space, access }),
        3 => Just(Op::Ask),
    ]
}

fn cases() -> u32 {
    std::env::var("FERRY_STORE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// The answer from a walk over every document the peer may read.
fn walked(store: &Store, peer: PeerId) -> Vec<(DocId, u64)> {
    store
        .docs_readable_by(peer)
        .unwrap()
        .into_iter()
        .filter_map(|doc| {
            let status = store.sync_status(peer, doc).ok()?;
            (status.pending > 0).then_some((doc, status.pending))
        })
        .collect()
}

fn answered(store: &Store, peer: PeerId) -> Vec<(DocId, u64)> {
    store
        .unacked(peer)
        .unwrap()
        .into_iter()
        .map(|(doc, status)| (doc, status.pending))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn unacked_matches_a_walk_over_every_readable_document(
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let peer = PeerId::from_bytes([1; 16]);
        store.put_peer(&PeerInfo::new(peer, "peer")).unwrap();
        store.grant(peer, SPACES[0], Access::ReadWrite).unwrap();
        let mut docs: Vec<(DocId, Option<ferry_store::Version>)> = Vec::new();
        let mut n = 0i64;
        for op in ops {
            let pick = |i: usize| (!docs.is_empty()).then(|| i % docs.len());
            match op {
                Op::Create { space, automerge } => {
                    let kind = if automerge { DocKind::Automerge } else { DocKind::GCounter };
                    docs.push((store.create_in(SPACES[space], kind).unwrap(), None));
                }
                Op::Edit { doc } => {
                    let Some(i) = pick(doc) else { continue };
                    let Ok(info) = store.info(docs[i].0) else { continue };
                    n += 1;
                    docs[i].1 = Some(info.version);
                    if info.kind == DocKind::Automerge {
                        store.change(docs[i].0, |tx| tx.put(ROOT, "n", n)).unwrap();
                    } else {
                        store.increment(docs[i].0, 1).unwrap();
                    }
                }
                Op::Ack { doc } | Op::AckOld { doc } => {
                    let Some(i) = pick(doc) else { continue };
                    let Ok(info) = store.info(docs[i].0) else { continue };
                    let version = match op {
                        Op::Ack { .. } => info.version,
                        _ => match docs[i].1.clone() {
                            Some(old) => old,
                            None => continue,
                        },
                    };
                    let update = SyncUpdate {
                        automerge_state: None,
                        acked: Some(version),
                        synced_at: Some(1_000),
                    };
                    store.record_sync(peer, docs[i].0, update).unwrap();
                }
                Op::Delete { doc } => {
                    let Some(i) = pick(doc) else { continue };
                    let _ = store.delete(docs[i].0);
                }
                Op::Grant { space, access } => {
                    store.grant(peer, SPACES[space], access).unwrap();
                }
                Op::Ask => {
                    prop_assert_eq!(answered(&store, peer), walked(&store, peer));
                }
            }
        }
        prop_assert_eq!(answered(&store, peer), walked(&store, peer));
        // Asked twice in a row, the same.
        prop_assert_eq!(answered(&store, peer), walked(&store, peer));
    }
}
