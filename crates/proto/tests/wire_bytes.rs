//! The bytes on the wire, pinned: one frame of every message type, as protocol version 2
//! encodes it. A change here breaks every peer already deployed; it needs a new version.
//! (Version 2 added the space to reconciliation items, `Snapshot` and `Deleted`, and the
//! `Pushing` and `Delta` messages; every other frame is byte for byte what version 1 wrote.
//! `SnapshotPart` and `Resume` came later in version 2, behind a hello capability bit.)

#![allow(clippy::unwrap_used)]

use ferry_proto::{ErrorCode, Item, Message, Prefix, Range};
use ferry_store::{DocId, DocKind, SpaceId};

/// The frames, in hex, as this build's first release wrote them.
const GOLDEN: [&str; 16] = [
    "050000000101fb2c01",
    "070000000203046e6f7065",
    "dd000000030303000000010101010101010101010150020707070707070707070707070707070704015a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a020202020202020201080808080808080808080808080808080000040404040404040400020201590303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303",
    "110000000407070707070707070707070707070707",
    "270000000507070707070707070707070707070707005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a04010203c8",
    "7300000006070707070707070707070707070707070104040404040404040404040404040404040404040404040404040404040404040205050505050505050505050505050505050505050505050505050505050505050606060606060606060606060606060606060606060606060606060606060606",
    "400100000707070707070707070707070707070707fb2c01090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909090909",
    "12000000080707070707070707070707070707070700",
    "12000000090707070707070707070707070707070704",
    "9a0000000a0707070707070707070707070707070700030201020082ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "190000000b070707070707070707070707070707070808080808080808",
    "220000000c070707070707070707070707070707070200000000000000000000000000000000",
    "220000000d020707070707070707070707070707070709090909090909090909090909090909",
    "1c0000000e070707070707070707070707070707070201020606060606060606",
    "4c0000000f070707070707070707070707070707070005050505050505050505050505050505fb2c010808080808080808080808080808080808080808080808080808080808080808fb000103010203",
    "3400000010070707070707070707070707070707070808080808080808080808080808080808080808080808080808080808080808fb0001",
];

#[test]
fn every_message_type_encodes_to_the_bytes_version_2_defined() {
    let doc = DocId::from_bytes([7; 16]);
    let space = SpaceId::from_bytes([0x5a; 16]);
    let msgs = vec![
        Message::Hello {
            version: 1,
            capabilities: 300,
        },
        Message::Error {
            code: ErrorCode::NoAccess,
            detail: "nope".into(),
        },
        Message::Reconcile {
            round: 3,
            ranges: vec![
                Range::Fingerprint {
                    prefix: Prefix::ROOT,
                    fingerprint: [1; 8],
                },
                Range::Items {
                    prefix: Prefix::ROOT.children()[5].clone(),
                    items: vec![
                        Item {
                            doc,
                            kind: DocKind::MvRegister,
                            space,
                            digest: [2; 8],
                            acked: true,
                        },
                        // The default space is one byte.
                        Item {
                            doc: DocId::from_bytes([8; 16]),
                            kind: DocKind::Automerge,
                            space: SpaceId::DEFAULT,
                            digest: [4; 8],
                            acked: false,
                        },
                    ],
                },
                Range::Split {
                    prefix: Prefix::ROOT.children()[5].children()[9].clone(),
                    children: [[3; 8]; 16],
                },
            ],
        },
        Message::Want { doc },
        Message::Snapshot {
            doc,
            kind: DocKind::Automerge,
            space,
            bytes: vec![1, 2, 3, 200],
        },
        Message::Heads {
            doc,
            heads: vec![[4; 32]],
            ancestors: vec![[5; 32], [6; 32]],
        },
        Message::Sync {
            doc,
            message: vec![9; 300],
        },
        Message::State { doc, bytes: vec![] },
        Message::Refused {
            doc,
            code: ErrorCode::ReadOnly,
        },
        Message::Changes {
            doc,
            heads: vec![],
            changes: vec![vec![1, 2], vec![], vec![255; 130]],
        },
        Message::Ack {
            doc,
            digest: [8; 8],
        },
        Message::Deleted {
            doc,
            kind: DocKind::PNCounter,
            space: SpaceId::DEFAULT,
        },
        Message::Pushing {
            docs: vec![doc, DocId::from_bytes([9; 16])],
        },
        Message::Delta {
            doc,
            bytes: vec![1, 2],
            result: [6; 8],
        },
        Message::SnapshotPart {
            doc,
            kind: DocKind::Automerge,
            space: SpaceId::from_bytes([5; 16]),
            total: 300,
            digest: [8; 32],
            offset: 256,
            bytes: vec![1, 2, 3],
        },
        Message::Resume {
            doc,
            digest: [8; 32],
            offset: 256,
        },
    ];
    assert_eq!(msgs.len(), GOLDEN.len());
    if std::env::var_os("FERRY_PRINT_GOLDEN").is_some() {
        for m in &msgs {
            let hex: String = m.to_frame().iter().map(|b| format!("{b:02x}")).collect();
            println!("    \"{hex}\",");
        }
    }
    for (m, golden) in msgs.iter().zip(GOLDEN) {
        let hex: String = m.to_frame().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, golden, "{m:?}");
        let frame: Vec<u8> = (0..golden.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&golden[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(&Message::from_frame(&frame, 1 << 20).unwrap(), m);
    }
}
