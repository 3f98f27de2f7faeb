//! The anchor the sync benches measure against: automerge's own sync loop, in memory.

use automerge::Automerge;
use automerge::sync::{State, SyncDoc};

/// Bytes and round trips of automerge's own loop until both sides are quiet.
pub(crate) fn automerge_sync(
    a: &mut Automerge,
    b: &mut Automerge,
    sa: &mut State,
    sb: &mut State,
) -> (usize, usize) {
    let (mut bytes, mut trips) = (0, 0);
    loop {
        let m1 = a.generate_sync_message(sa);
        if let Some(m) = &m1 {
            let enc = m.clone().encode();
            bytes += enc.len();
            b.receive_sync_message(sb, automerge::sync::Message::decode(&enc).unwrap())
                .unwrap();
        }
        let m2 = b.generate_sync_message(sb);
        if let Some(m) = &m2 {
            let enc = m.clone().encode();
            bytes += enc.len();
            a.receive_sync_message(sa, automerge::sync::Message::decode(&enc).unwrap())
                .unwrap();
        }
        if m1.is_none() && m2.is_none() {
            return (bytes, trips);
        }
        trips += 1;
    }
}
