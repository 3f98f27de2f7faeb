//! Reconciliation: finding the documents two replicas hold differently, in
//! O(changed · log n) bytes.
//!
//! Each side lists its documents as (id, short digest) pairs sorted by id. The walk runs over
//! the 16-way trie of id nibbles: a side describes a prefix by its items when few, else by a
//! fingerprint; a fingerprint that differs is answered with the prefix's items or a split into
//! its 16 children. Turns alternate, numbered, until a turn has nothing left to say.
//!
//! This module is pure: a [`Reconciler`] takes the peer's turns and returns what it found
//! ([`Finding`]s) and the reply to send. It reads no store; the session acts on the findings.

use ferry_store::{DocId, DocKind, SpaceId};
use serde::{Deserialize, Serialize};

/// Digests and fingerprints as the protocol carries them: the first 8 bytes of a blake3
/// digest. Two different versions share one with probability 2^-64; the worst a false match
/// does is leave a difference for a later session or send changes the peer already holds.
pub type ShortDigest = [u8; 8];

/// Shortens a digest for the wire.
pub fn short(digest: &[u8; 32]) -> ShortDigest {
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// A set of document ids sharing their first `len` nibbles (half-bytes): a node of the
/// 16-way trie that reconciliation walks. The root has `len` 0.
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "PrefixWire", into = "PrefixWire")]
pub struct Prefix {
    len: u8,
    bytes: [u8; 16],
}

#[derive(Serialize, Deserialize)]
struct PrefixWire {
    len: u8,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

impl TryFrom<PrefixWire> for Prefix {
    type Error = &'static str;
    fn try_from(wire: PrefixWire) -> Result<Self, Self::Error> {
        let len = wire.len;
        if len > 32 {
            return Err("prefix longer than an id");
        }
        if wire.bytes.len() != usize::from(len).div_ceil(2) {
            return Err("prefix bytes do not match its length");
        }
        let mut bytes = [0u8; 16];
        bytes[..wire.bytes.len()].copy_from_slice(&wire.bytes);
        if len % 2 == 1 && bytes[usize::from(len) / 2] & 0x0f != 0 {
            return Err("prefix padding is not zero");
        }
        Ok(Prefix { len, bytes })
    }
}

impl From<Prefix> for PrefixWire {
    fn from(p: Prefix) -> Self {
        PrefixWire {
            len: p.len,
            bytes: p.bytes[..usize::from(p.len).div_ceil(2)].to_vec(),
        }
    }
}

impl Prefix {
    /// The root: every id.
    pub const ROOT: Prefix = Prefix {
        len: 0,
        bytes: [0; 16],
    };

    /// Its length in nibbles.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is the root.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn nibble(bytes: &[u8; 16], i: u8) -> u8 {
        let byte = bytes[usize::from(i / 2)];
        if i.is_multiple_of(2) {
            byte >> 4
        } else {
            byte & 0x0f
        }
    }

    /// Whether `doc` lies under this prefix.
    pub fn contains(&self, doc: &DocId) -> bool {
        let id = doc.as_bytes();
        (0..self.len).all(|i| Self::nibble(id, i) == Self::nibble(&self.bytes, i))
    }

    /// Its 16 children, or none at full length.
    pub fn children(&self) -> Vec<Prefix> {
        if self.len >= 32 {
            return Vec::new();
        }
        (0..16u8)
            .map(|n| {
                let mut bytes = self.bytes;
                let at = usize::from(self.len / 2);
                if self.len.is_multiple_of(2) {
                    bytes[at] = n << 4;
                } else {
                    bytes[at] = (bytes[at] & 0xf0) | n;
                }
                Prefix {
                    len: self.len + 1,
                    bytes,
                }
            })
            .collect()
    }

    /// The smallest id under this prefix, for searching a sorted list.
    pub fn first_id(&self) -> [u8; 16] {
        self.bytes
    }
}

/// One document as reconciliation lists it.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The document.
    pub doc: DocId,
    /// Its kind, so a replica that lacks it knows what to ask for.
    pub kind: DocKind,
    /// Its space, so a replica that lacks it knows whether the sender may write it there. On
    /// the wire, one byte for the default space (`None`), else the id (`Some`).
    #[serde(with = "compact_space")]
    pub space: SpaceId,
    /// Its digest (shortened): heads digest or state digest.
    pub digest: ShortDigest,
    /// Whether the sender has recorded that the receiver holds this very version; if not, and
    /// the receiver does, the receiver acknowledges it.
    pub acked: bool,
}

/// A space as an `Option`: the default space as `None` (one byte), any other as `Some(id)`.
mod compact_space {
    use ferry_store::SpaceId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(space: &SpaceId, s: S) -> Result<S::Ok, S::Error> {
        let wire = (!space.is_default()).then_some(space);
        wire.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SpaceId, D::Error> {
        Ok(Option::<SpaceId>::deserialize(d)?.unwrap_or_default())
    }
}

/// What one side says about the documents under a prefix.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub enum Range {
    /// A fingerprint of every (document, digest) pair under the prefix.
    Fingerprint {
        /// The prefix.
        prefix: Prefix,
        /// blake3 over the sorted pairs, shortened.
        fingerprint: ShortDigest,
    },
    /// Every document under the prefix.
    Items {
        /// The prefix.
        prefix: Prefix,
        /// The documents, in id order.
        items: Vec<Item>,
    },
    /// The prefix's 16 children, each by its fingerprint, in nibble order; all zeros for a
    /// child under which the sender holds nothing (no fingerprint of documents is all zeros).
    Split {
        /// The prefix.
        prefix: Prefix,
        /// The children's fingerprints.
        children: [ShortDigest; 16],
    },
}

impl Range {
    /// The prefix it describes.
    pub fn prefix(&self) -> &Prefix {
        match self {
            Range::Fingerprint { prefix, .. }
            | Range::Items { prefix, .. }
            | Range::Split { prefix, .. } => prefix,
        }
    }
}

/// One document as this side lists it for reconciliation.
#[derive(Clone, Debug, Eq, PartialEq)]
pub(crate) struct Entry {
    pub(crate) doc: DocId,
    pub(crate) kind: DocKind,
    pub(crate) space: SpaceId,
    pub(crate) digest: ShortDigest,
    /// The store records that the peer holds this version.
    pub(crate) acked: bool,
}

impl Entry {
    fn item(&self) -> Item {
        Item {
            doc: self.doc,
            kind: self.kind,
            space: self.space,
            digest: self.digest,
            acked: self.acked,
        }
    }
}

/// What a turn of reconciliation found out about one document, in the order found.
#[derive(Clone, Debug, Eq, PartialEq)]
pub(crate) enum Finding {
    /// A fingerprint matched over this document: the peer holds it as listed here. Only
    /// documents this side has not recorded as acknowledged are reported.
    Matched(DocId),
    /// Both sides list the document with the same kind and digest.
    Same {
        /// This side's entry.
        mine: Entry,
        /// Whether the peer has recorded that this side holds it.
        theirs_acked: bool,
    },
    /// Both sides list the document with the same kind and different digests.
    Differs {
        /// This side's entry.
        mine: Entry,
        /// The peer's digest.
        theirs: ShortDigest,
    },
    /// Only this side lists the document.
    OnlyMine(DocId),
    /// Only the peer lists the document.
    OnlyTheirs {
        /// The document.
        doc: DocId,
        /// Its kind, as the peer lists it.
        kind: DocKind,
        /// Its space, as the peer lists it.
        space: SpaceId,
        /// The peer's digest ([`TOMBSTONE`] for a document it deleted).
        digest: ShortDigest,
    },
}

/// What a turn of reconciliation asks of the session.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub(crate) struct Turn {
    /// What the peer's turn showed, to act on before the reply goes out.
    pub(crate) findings: Vec<Finding>,
    /// The reply turn, if one is due: its round and ranges (empty ranges end the walk).
    pub(crate) reply: Option<(u32, Vec<Range>)>,
    /// Reconciliation ended with this turn.
    pub(crate) finished: bool,
}

/// Why a turn of reconciliation was refused.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub(crate) enum ReconcileError {
    /// A turn came out of order, or after the walk ended.
    #[error("a reconciliation turn out of order")]
    OutOfOrder,
    /// Items were not sorted or lay outside their prefix.
    #[error("items out of order or outside their prefix")]
    BadItems,
}

/// One side of the walk over a fixed listing of this side's documents.
#[derive(Debug)]
pub(crate) struct Reconciler {
    /// This side's documents the peer may read, sorted by id, as of the session's start.
    listed: Vec<Entry>,
    /// A prefix holding at most this many documents is listed rather than split.
    leaf: usize,
    /// Prefixes whose fingerprints this side sent last; those the reply passes over matched.
    outstanding: Vec<Prefix>,
    /// The turn this side expects next; the walk is strictly turn by turn, so any earlier
    /// one is a replay.
    round: u32,
    finished: bool,
}

impl Reconciler {
    /// A reconciler over `listed`, which must be sorted by id without repeats.
    pub(crate) fn new(mut listed: Vec<Entry>, leaf: usize) -> Self {
        listed.sort_by_key(|e| e.doc);
        listed.dedup_by(|a, b| a.doc == b.doc);
        Self {
            listed,
            leaf,
            outstanding: Vec::new(),
            round: 0,
            finished: false,
        }
    }

    /// The initiator's first turn: round 0, the root described.
    pub(crate) fn start(&mut self) -> (u32, Vec<Range>) {
        let root = self.describe(&Prefix::ROOT);
        if let Range::Fingerprint { prefix, .. } = &root {
            self.outstanding.push(prefix.clone());
        }
        self.round = 1;
        (0, vec![root])
    }

    /// Whether the walk has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    /// Frees the listing once the walk has ended: nothing reads it after the last turn's
    /// findings are handled.
    pub(crate) fn release(&mut self) {
        if self.finished {
            self.listed = Vec::new();
            self.outstanding = Vec::new();
        }
    }

    /// This side's entry for `doc`, if listed.
    pub(crate) fn entry(&self, doc: DocId) -> Option<&Entry> {
        let at = self.listed.binary_search_by(|e| e.doc.cmp(&doc)).ok()?;
        self.listed.get(at)
    }

    /// Marks `doc` as held by the peer in the listing, so later turns say so.
    pub(crate) fn mark_acked(&mut self, doc: DocId) {
        if let Ok(at) = self.listed.binary_search_by(|e| e.doc.cmp(&doc)) {
            self.listed[at].acked = true;
        }
    }

    /// Handles the peer's turn `round`. A replay of a turn already taken gives an empty
    /// [`Turn`]; a turn from the future, or after the end, is an error.
    pub(crate) fn handle(
        &mut self,
        round: u32,
        ranges: Vec<Range>,
    ) -> Result<Turn, ReconcileError> {
        if round < self.round {
            return Ok(Turn::default());
        }
        if round > self.round || self.finished {
            return Err(ReconcileError::OutOfOrder);
        }
        self.round = round.saturating_add(2);
        let reply_round = round.saturating_add(1);
        let mut findings = Vec::new();
        // A fingerprint this side sent is answered by items or a split of its prefix, or by
        // nothing when it matched: then the peer holds every document under it as listed here.
        for prefix in std::mem::take(&mut self.outstanding) {
            if !ranges.iter().any(|r| *r.prefix() == prefix) {
                self.matched_under(&prefix, &mut findings);
            }
        }
        if ranges.is_empty() {
            self.finished = true;
            return Ok(Turn {
                findings,
                reply: None,
                finished: true,
            });
        }
        let mut reply = Vec::new();
        for range in ranges {
            match range {
                Range::Fingerprint {
                    prefix,
                    fingerprint: theirs,
                } => self.answer_fingerprint(prefix, theirs, &mut reply, &mut findings),
                Range::Split { prefix, children } => {
                    for (child, theirs) in prefix.children().into_iter().zip(children) {
                        if theirs == EMPTY {
                            self.compare(&child, &[], &mut findings);
                        } else {
                            self.answer_fingerprint(child, theirs, &mut reply, &mut findings);
                        }
                    }
                }
                Range::Items { prefix, items } => {
                    validate_items(&prefix, &items)?;
                    self.compare(&prefix, &items, &mut findings);
                }
            }
        }
        self.outstanding = reply
            .iter()
            .flat_map(|r| match r {
                Range::Split { prefix, children } => prefix
                    .children()
                    .into_iter()
                    .zip(children)
                    .filter(|(_, fp)| **fp != EMPTY)
                    .map(|(child, _)| child)
                    .collect(),
                Range::Fingerprint { prefix, .. } => vec![prefix.clone()],
                Range::Items { .. } => Vec::new(),
            })
            .collect();
        let finished = reply.is_empty();
        self.finished = finished;
        Ok(Turn {
            findings,
            reply: Some((reply_round, reply)),
            finished,
        })
    }

    fn under(&self, prefix: &Prefix) -> &[Entry] {
        let start = self
            .listed
            .partition_point(|e| e.doc.as_bytes() < &prefix.first_id());
        let len = self.listed[start..]
            .iter()
            .take_while(|e| prefix.contains(&e.doc))
            .count();
        &self.listed[start..start + len]
    }

    /// This side's account of a prefix: its items if few, else their fingerprint.
    fn describe(&self, prefix: &Prefix) -> Range {
        let entries = self.under(prefix);
        if entries.len() <= self.leaf {
            Range::Items {
                prefix: prefix.clone(),
                items: entries.iter().map(Entry::item).collect(),
            }
        } else {
            Range::Fingerprint {
                prefix: prefix.clone(),
                fingerprint: fingerprint(entries),
            }
        }
    }

    /// The peer's fingerprint of `prefix`: nothing to do if it matches this side's, else this
    /// side's items if few, else a split.
    fn answer_fingerprint(
        &self,
        prefix: Prefix,
        theirs: ShortDigest,
        reply: &mut Vec<Range>,
        findings: &mut Vec<Finding>,
    ) {
        let mine = self.under(&prefix);
        if fingerprint(mine) == theirs {
            self.matched_under(&prefix, findings);
        } else if mine.len() <= self.leaf || prefix.len() >= 32 {
            reply.push(Range::Items {
                items: mine.iter().map(Entry::item).collect(),
                prefix,
            });
        } else {
            let mut children = [EMPTY; 16];
            for (fp, child) in children.iter_mut().zip(prefix.children()) {
                *fp = fingerprint(self.under(&child));
            }
            reply.push(Range::Split { prefix, children });
        }
    }

    /// The peer holds every document under `prefix` as listed here.
    fn matched_under(&self, prefix: &Prefix, findings: &mut Vec<Finding>) {
        findings.extend(
            self.under(prefix)
                .iter()
                .filter(|e| !e.acked)
                .map(|e| Finding::Matched(e.doc)),
        );
    }

    /// The peer listed everything it has under `prefix`: a finding for each difference.
    fn compare(&self, prefix: &Prefix, theirs: &[Item], findings: &mut Vec<Finding>) {
        let mut t = theirs.iter().peekable();
        let mut m = self.under(prefix).iter().peekable();
        loop {
            match (m.peek(), t.peek()) {
                (None, None) => return,
                (Some(a), Some(b)) if a.doc == b.doc => {
                    if a.kind != b.kind {
                        // Ids are random: two kinds under one id is a broken peer's doing.
                    } else if a.digest == b.digest {
                        findings.push(Finding::Same {
                            mine: (*a).clone(),
                            theirs_acked: b.acked,
                        });
                    } else {
                        findings.push(Finding::Differs {
                            mine: (*a).clone(),
                            theirs: b.digest,
                        });
                    }
                    m.next();
                    t.next();
                }
                (Some(a), b) if b.is_none_or(|b| a.doc < b.doc) => {
                    findings.push(Finding::OnlyMine(a.doc));
                    m.next();
                }
                (_, Some(b)) => {
                    findings.push(Finding::OnlyTheirs {
                        doc: b.doc,
                        kind: b.kind,
                        space: b.space,
                        digest: b.digest,
                    });
                    t.next();
                }
                (Some(_), None) => unreachable!("handled by the arm above"),
            }
        }
    }
}

/// The digest under which a deleted document is listed: its tombstone. (A version's digest
/// equals it with probability 2^-64.)
pub(crate) const TOMBSTONE: ShortDigest = *b"\xffdeleted";

/// The fingerprint of no documents, which marks an empty child in a split.
const EMPTY: ShortDigest = [0; 8];

/// blake3 over the (id, digest) pairs, shortened; never [`EMPTY`] for documents.
fn fingerprint(entries: &[Entry]) -> ShortDigest {
    if entries.is_empty() {
        return EMPTY;
    }
    let mut hasher = blake3::Hasher::new();
    for e in entries {
        hasher.update(e.doc.as_bytes());
        hasher.update(&e.digest);
    }
    let mut fp = short(hasher.finalize().as_bytes());
    if fp == EMPTY {
        fp[7] = 1;
    }
    fp
}

fn validate_items(prefix: &Prefix, items: &[Item]) -> Result<(), ReconcileError> {
    let sorted = items.windows(2).all(|w| w[0].doc < w[1].doc);
    if !sorted || !items.iter().all(|i| prefix.contains(&i.doc)) {
        return Err(ReconcileError::BadItems);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn id(i: u32) -> DocId {
        let hash = blake3::hash(&i.to_le_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash.as_bytes()[..16]);
        DocId::from_bytes(bytes)
    }

    fn entry(i: u32, version: u8) -> Entry {
        Entry {
            doc: id(i),
            kind: DocKind::Automerge,
            space: SpaceId::DEFAULT,
            digest: [version; 8],
            acked: false,
        }
    }

    /// What a whole walk found, on each side, and how many turns it took.
    struct Walk {
        initiator: Vec<Finding>,
        responder: Vec<Finding>,
        turns: usize,
    }

    fn walk(mine: Vec<Entry>, theirs: Vec<Entry>) -> Walk {
        let mut sides = [Reconciler::new(mine, 16), Reconciler::new(theirs, 16)];
        let mut found = [Vec::new(), Vec::new()];
        let (mut round, mut ranges) = sides[0].start();
        let mut turns = 1;
        let mut next = 1;
        loop {
            let turn = sides[next].handle(round, ranges).unwrap();
            found[next].extend(turn.findings);
            match turn.reply {
                Some((r, reply)) => {
                    turns += 1;
                    (round, ranges) = (r, reply);
                }
                None => break,
            }
            if turn.finished {
                // The other side still hears the empty turn, and finishes.
                let last = sides[1 - next].handle(round, ranges).unwrap();
                assert!(last.finished && last.reply.is_none());
                found[1 - next].extend(last.findings);
                break;
            }
            next = 1 - next;
        }
        assert!(sides[0].is_finished() && sides[1].is_finished());
        let [initiator, responder] = found;
        Walk {
            initiator,
            responder,
            turns,
        }
    }

    fn differing(findings: &[Finding]) -> BTreeSet<DocId> {
        findings
            .iter()
            .filter_map(|f| match f {
                Finding::Differs { mine, .. } => Some(mine.doc),
                Finding::OnlyMine(doc) | Finding::OnlyTheirs { doc, .. } => Some(*doc),
                Finding::Matched(_) | Finding::Same { .. } => None,
            })
            .collect()
    }

    #[test]
    fn equal_listings_end_in_one_exchange_with_every_document_matched() {
        let listing: Vec<Entry> = (0..1_000).map(|i| entry(i, 1)).collect();
        let walk = walk(listing.clone(), listing);
        assert_eq!(walk.turns, 2);
        assert_eq!(walk.responder.len(), 1_000);
        assert!(
            walk.responder
                .iter()
                .all(|f| matches!(f, Finding::Matched(_)))
        );
        // The initiator learns the same from the empty reply.
        assert_eq!(walk.initiator.len(), 1_000);
    }

    #[test]
    fn acknowledged_documents_are_not_reported_again() {
        let mut listing: Vec<Entry> = (0..100).map(|i| entry(i, 1)).collect();
        for e in &mut listing {
            e.acked = true;
        }
        let walk = walk(listing.clone(), listing);
        assert!(walk.initiator.is_empty() && walk.responder.is_empty());
    }

    #[test]
    fn a_walk_finds_exactly_the_documents_that_differ() {
        let n = 5_000;
        let mut mine: Vec<Entry> = (0..n).map(|i| entry(i, 1)).collect();
        let mut theirs = mine.clone();
        let changed = [7, 1_234, 4_999];
        for &i in &changed {
            theirs[i as usize].digest = [2; 8];
        }
        mine.push(entry(n, 1)); // only mine
        theirs.push(entry(n + 1, 1)); // only theirs
        let walk = walk(mine, theirs);
        let expected: BTreeSet<DocId> = changed
            .iter()
            .map(|&i| id(i))
            .chain([id(n), id(n + 1)])
            .collect();
        // Each difference is found by the side that received the other's items, once.
        let (a, b) = (differing(&walk.initiator), differing(&walk.responder));
        assert!(a.is_disjoint(&b));
        assert_eq!(a.union(&b).copied().collect::<BTreeSet<_>>(), expected);
        // Down the trie and back: a handful of turns, not one per document.
        assert!(walk.turns <= 8, "{} turns", walk.turns);
    }

    #[test]
    fn a_document_of_another_kind_under_the_same_id_is_passed_over() {
        let mine = vec![entry(1, 1)];
        let mut theirs = vec![entry(1, 2)];
        theirs[0].kind = DocKind::GCounter;
        let walk = walk(mine, theirs);
        assert!(walk.initiator.is_empty() && walk.responder.is_empty());
    }

    #[test]
    fn replayed_turns_are_ignored_and_early_or_late_ones_refused() {
        let listing: Vec<Entry> = (0..3).map(|i| entry(i, 1)).collect();
        let mut initiator = Reconciler::new(listing.clone(), 16);
        let mut responder = Reconciler::new(listing, 16);
        let (round, ranges) = initiator.start();
        assert_eq!(
            responder.handle(round + 2, ranges.clone()),
            Err(ReconcileError::OutOfOrder)
        );
        let turn = responder.handle(round, ranges.clone()).unwrap();
        assert!(turn.finished);
        // The same turn again: a replay, nothing found, no reply.
        assert_eq!(responder.handle(round, ranges).unwrap(), Turn::default());
        // A new turn after the end is out of order.
        assert_eq!(
            responder.handle(round + 2, Vec::new()),
            Err(ReconcileError::OutOfOrder)
        );
    }

    #[test]
    fn items_out_of_order_or_outside_their_prefix_are_refused() {
        let mut responder = Reconciler::new(Vec::new(), 16);
        let items = |docs: &[u32]| Range::Items {
            prefix: Prefix::ROOT.children()[0].clone(),
            items: docs.iter().map(|&i| entry(i, 1).item()).collect(),
        };
        // Ids whose first nibble is not 0 lie outside the first child.
        let outside = (0..).find(|&i| !Prefix::ROOT.children()[0].contains(&id(i)));
        let outside = outside.expect("some id starts with another nibble");
        assert_eq!(
            responder.handle(0, vec![items(&[outside])]),
            Err(ReconcileError::BadItems)
        );
    }

    #[test]
    fn fingerprints_of_documents_are_never_the_empty_marker() {
        for i in 0..2_000 {
            assert_ne!(fingerprint(&[entry(i, (i % 255) as u8)]), EMPTY);
        }
        assert_eq!(fingerprint(&[]), EMPTY);
    }
}
