//! Every message survives its frame; arbitrary bytes never panic the decoder.

#![allow(clippy::unwrap_used)]

use ferry_proto::{ErrorCode, FrameReader, Item, Message, Prefix, Range};
use ferry_store::{DocId, DocKind, SpaceId};
use proptest::prelude::*;

fn doc() -> impl Strategy<Value = DocId> {
    any::<[u8; 16]>().prop_map(DocId::from_bytes)
}

fn space() -> impl Strategy<Value = SpaceId> {
    prop_oneof![
        Just(SpaceId::DEFAULT),
        any::<[u8; 16]>().prop_map(SpaceId::from_bytes)
    ]
}

fn kind() -> impl Strategy<Value = DocKind> {
    (0..5usize).prop_map(|i| DocKind::ALL[i])
}

fn code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::UnsupportedVersion),
        Just(ErrorCode::Malformed),
        Just(ErrorCode::OutOfOrder),
        Just(ErrorCode::NoAccess),
        Just(ErrorCode::ReadOnly),
        Just(ErrorCode::Internal),
        Just(ErrorCode::FutureStamp),
    ]
}

/// A prefix: the root, descended along the nibbles of an id.
fn prefix() -> impl Strategy<Value = Prefix> {
    (any::<[u8; 16]>(), 0..=32usize).prop_map(|(id, len)| {
        let mut p = Prefix::ROOT;
        for i in 0..len {
            let nibble = if i % 2 == 0 {
                id[i / 2] >> 4
            } else {
                id[i / 2] & 0xf
            };
            p = p.children()[usize::from(nibble)].clone();
        }
        p
    })
}

fn range() -> impl Strategy<Value = Range> {
    prop_oneof![
        (prefix(), any::<[u8; 8]>()).prop_map(|(prefix, fingerprint)| Range::Fingerprint {
            prefix,
            fingerprint
        }),
        (
            prefix(),
            proptest::collection::vec(
                (doc(), kind(), space(), any::<[u8; 8]>(), any::<bool>()),
                0..5
            )
        )
            .prop_map(|(prefix, items)| Range::Items {
                prefix,
                items: items
                    .into_iter()
                    .map(|(doc, kind, space, digest, acked)| Item {
                        doc,
                        kind,
                        space,
                        digest,
                        acked
                    })
                    .collect()
            }),
        (prefix(), any::<[[u8; 8]; 16]>())
            .prop_map(|(prefix, children)| Range::Split { prefix, children }),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..300)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u32>(), any::<u64>()).prop_map(|(version, capabilities)| Message::Hello {
            version,
            capabilities
        }),
        (code(), ".{0,40}").prop_map(|(code, detail)| Message::Error { code, detail }),
        (any::<u32>(), proptest::collection::vec(range(), 0..6))
            .prop_map(|(round, ranges)| Message::Reconcile { round, ranges }),
        doc().prop_map(|doc| Message::Want { doc }),
        (doc(), kind(), space(), bytes()).prop_map(|(doc, kind, space, bytes)| {
            Message::Snapshot {
                doc,
                kind,
                space,
                bytes,
            }
        }),
        proptest::collection::vec(doc(), 0..4).prop_map(|docs| Message::Pushing { docs }),
        (doc(), bytes(), any::<[u8; 8]>()).prop_map(|(doc, bytes, result)| Message::Delta {
            doc,
            bytes,
            result
        }),
        (
            (doc(), kind(), space()),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            bytes()
        )
            .prop_map(|((doc, kind, space), total, digest, offset, bytes)| {
                Message::SnapshotPart {
                    doc,
                    kind,
                    space,
                    total,
                    digest,
                    offset,
                    bytes,
                }
            }),
        (doc(), any::<[u8; 32]>(), any::<u64>()).prop_map(|(doc, digest, offset)| {
            Message::Resume {
                doc,
                digest,
                offset,
            }
        }),
        (doc(), kind(), space()).prop_map(|(doc, kind, space)| Message::Deleted {
            doc,
            kind,
            space
        }),
        (
            doc(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..4),
            proptest::collection::vec(any::<[u8; 32]>(), 0..11)
        )
            .prop_map(|(doc, heads, ancestors)| Message::Heads {
                doc,
                heads,
                ancestors
            }),
        (doc(), bytes()).prop_map(|(doc, message)| Message::Sync { doc, message }),
        (doc(), bytes()).prop_map(|(doc, bytes)| Message::State { doc, bytes }),
        (doc(), code()).prop_map(|(doc, code)| Message::Refused { doc, code }),
        (
            doc(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..4),
            proptest::collection::vec(bytes(), 0..4)
        )
            .prop_map(|(doc, heads, changes)| Message::Changes {
                doc,
                heads,
                changes
            }),
        (doc(), any::<[u8; 8]>()).prop_map(|(doc, digest)| Message::Ack { doc, digest }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(
        message in message(),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
    ) {
        let frame = message.to_frame();
        prop_assert_eq!(Message::from_frame(&frame, 1 << 20).unwrap(), message.clone());
        // And through a stream reader, split at random points.
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(frame.len())).collect();
        cuts.push(frame.len());
        cuts.sort_unstable();
        let mut reader = FrameReader::new(1 << 20);
        let mut from = 0;
        for cut in cuts {
            reader.push(&frame[from..cut]);
            from = cut;
            if cut < frame.len() {
                prop_assert!(reader.next_frame().unwrap().is_none());
            }
        }
        prop_assert_eq!(reader.next_frame().unwrap().unwrap(), frame);
    }

    #[test]
    fn frames_over_the_limit_are_refused(message in message()) {
        let frame = message.to_frame();
        let body = (frame.len() - 4) as u32;
        prop_assert!(Message::from_frame(&frame, body - 1).is_err());
        let mut reader = FrameReader::new(body - 1);
        reader.push(&frame[..4]);
        prop_assert!(reader.next_frame().is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::from_frame(&bytes, 1 << 16);
        let mut framed = ((bytes.len()) as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        // Whatever decodes has one encoding: the bytes it came from.
        for frame in [&bytes, &framed] {
            if let Ok(message) = Message::from_frame(frame, 1 << 16) {
                prop_assert_eq!(&message.to_frame(), frame);
            }
        }
    }
}
