//! What a session knows of the peer's copy of one document, kept in one struct so that it is
//! created, changed and forgotten together.

use automerge::ChangeHash;
use automerge::sync;
use ferry_crdt::Digest;

/// What this session knows of the peer's copy of one document. Lives as long as the session;
/// what outlasts it is in the store's sync record.
#[derive(Debug, Default)]
pub(super) struct PeerDoc {
    /// Automerge's sync state with the peer, loaded from the sync record on first use.
    pub(super) sync: Option<sync::State>,
    /// Heads the peer holds once a snapshot sent to it loads, for automerge's sync state when
    /// it is loaded (until then, there is no reason to read the sync record).
    pub(super) shared_on_load: Option<Vec<ChangeHash>>,
    /// A `Heads` message for the document went to the peer.
    pub(super) heads_sent: bool,
    /// The peer refused this side's changes to the document.
    pub(super) refused: bool,
    /// Automerge heads the peer said it holds.
    pub(super) peer_heads: Option<Vec<ChangeHash>>,
    /// This side's heads when it last sent changes or a snapshot: the peer will hold them.
    pub(super) sent_heads: Option<Vec<ChangeHash>>,
    /// The CRDT state digest the peer said it holds.
    pub(super) peer_state: Option<Digest>,
    /// The digest of the CRDT state this side last sent.
    pub(super) state_sent: Option<Digest>,
}

impl PeerDoc {
    /// Every head the peer holds or will hold once what was sent arrives, if any is known.
    pub(super) fn peer_has(&self) -> Option<Vec<ChangeHash>> {
        let mut heads: Vec<ChangeHash> = self
            .peer_heads
            .iter()
            .chain(&self.sent_heads)
            .flatten()
            .copied()
            .collect();
        if heads.is_empty() {
            return None;
        }
        heads.sort_unstable();
        heads.dedup();
        Some(heads)
    }

    /// Forgets every guess about what the peer holds: this session's and automerge's. Changes
    /// automerge believes sent may have gone another way (a `Changes` push), and a message it
    /// believes in flight may have been answered by one; either would keep it from saying
    /// anything more.
    pub(super) fn forget_guesses(&mut self) {
        self.peer_heads = None;
        self.sent_heads = None;
        if let Some(state) = &mut self.sync {
            state.sent_hashes.clear();
            state.in_flight = false;
        }
    }
}
