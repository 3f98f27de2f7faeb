//! How far sync has come, per peer and per document.

use std::time::SystemTime;

use ferry_net::ConnectionState;
use ferry_store::{DocId, PeerId};

/// A snapshot of sync with every known peer; see
/// [`Replica::sync_status`](crate::Replica::sync_status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncStatus {
    /// Every peer in the peer table, in id order.
    pub peers: Vec<PeerStatus>,
}

impl SyncStatus {
    /// One peer's status.
    pub fn peer(&self, peer: PeerId) -> Option<&PeerStatus> {
        self.peers.iter().find(|p| p.peer == peer)
    }

    /// Changes to `doc` not yet acknowledged by any one of the peers that may read it, at
    /// most: the largest pending count among them.
    pub fn pending(&self, doc: DocId) -> u64 {
        self.peers
            .iter()
            .filter_map(|p| p.doc(doc))
            .map(|d| d.pending)
            .max()
            .unwrap_or(0)
    }
}

/// Sync with one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub peer: PeerId,
    /// Its name in the peer table.
    pub name: String,
    /// Its connection.
    pub connection: ConnectionState,
    /// When a sync with it last finished comparing every document it may read; from then on,
    /// a document not in [`PeerStatus::docs`] was in sync.
    pub last_sync: Option<SystemTime>,
    /// The documents it may read that hold changes it has not acknowledged, in id order. A
    /// document it holds as this replica does is not listed: the list is as long as what
    /// waits, however many documents the peer may read.
    pub docs: Vec<DocStatus>,
}

impl PeerStatus {
    /// The status of one document with changes waiting for this peer; `None` if the peer
    /// holds all of it (or may not read it).
    pub fn doc(&self, doc: DocId) -> Option<&DocStatus> {
        self.docs.iter().find(|d| d.doc == doc)
    }

    /// Whether nothing waits for this peer.
    pub fn is_in_sync(&self) -> bool {
        self.docs.is_empty()
    }
}

/// Sync of one document with one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocStatus {
    /// The document.
    pub doc: DocId,
    /// This replica's changes the peer has not acknowledged (at least 1).
    pub pending: u64,
    /// When the peer was last seen to hold the whole document.
    pub last_sync: Option<SystemTime>,
}
