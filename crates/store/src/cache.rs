//! What the store keeps in memory over sled: loaded documents, and the metadata of many more.

use std::num::NonZeroUsize;

use lru::LruCache;

use crate::records::DocMeta;
use crate::store::Entry;
use crate::{DocId, SpaceId};

/// Loaded documents (an LRU of [`Entry`]), and behind them an LRU of the metadata and space of
/// documents that are not loaded, so that sync can ask after thousands of documents (their
/// version, space, size) without a sled read each.
///
/// A document is in one of the two at most. Metadata changes only through a loaded document's
/// entry (every write loads it first), or with the document removed from both (deletion, a
/// failed commit), so the metadata kept here is always what sled holds.
///
/// Both grow as they fill, up to their bounds: a process holding many small stores (a load
/// generator, an app with a store per account) does not pay for 65,536 slots in each.
pub(crate) struct Cache {
    docs: LruCache<DocId, Entry>,
    metas: LruCache<DocId, (DocMeta, SpaceId)>,
    max_docs: usize,
    max_metas: usize,
}

impl Cache {
    pub(crate) fn new(docs: NonZeroUsize, metas: NonZeroUsize) -> Self {
        Self {
            docs: LruCache::unbounded(),
            metas: LruCache::unbounded(),
            max_docs: docs.get(),
            max_metas: metas.get(),
        }
    }

    /// Keeps `entry` loaded. The document it pushes out keeps its metadata here.
    pub(crate) fn put(&mut self, doc: DocId, entry: Entry) {
        self.metas.pop(&doc);
        if self.docs.put(doc, entry).is_none()
            && self.docs.len() > self.max_docs
            && let Some((old, evicted)) = self.docs.pop_lru()
        {
            self.keep_meta(old, (evicted.meta, evicted.space));
        }
    }

    fn keep_meta(&mut self, doc: DocId, meta: (DocMeta, SpaceId)) {
        if self.metas.put(doc, meta).is_none() && self.metas.len() > self.max_metas {
            self.metas.pop_lru();
        }
    }

    /// Forgets `doc` entirely: its entry and its metadata.
    pub(crate) fn pop(&mut self, doc: &DocId) {
        self.docs.pop(doc);
        self.metas.pop(doc);
    }

    pub(crate) fn contains(&self, doc: &DocId) -> bool {
        self.docs.contains(doc)
    }

    pub(crate) fn get_mut(&mut self, doc: &DocId) -> Option<&mut Entry> {
        self.docs.get_mut(doc)
    }

    /// How many documents are loaded.
    pub(crate) fn len(&self) -> usize {
        self.docs.len()
    }

    /// `doc`'s metadata and space, if it is loaded or its metadata is kept.
    pub(crate) fn meta(&mut self, doc: &DocId) -> Option<(DocMeta, SpaceId)> {
        match self.docs.get(doc) {
            Some(entry) => Some((entry.meta.clone(), entry.space)),
            None => self.metas.get(doc).cloned(),
        }
    }

    /// `doc`'s metadata, if it is loaded or kept, without marking it used.
    pub(crate) fn peek_meta(&self, doc: &DocId) -> Option<&DocMeta> {
        match self.docs.peek(doc) {
            Some(entry) => Some(&entry.meta),
            None => self.metas.peek(doc).map(|(meta, _)| meta),
        }
    }

    /// Keeps the metadata and space of a document that is not loaded, as just read from sled
    /// under the store's lock.
    pub(crate) fn remember(&mut self, doc: DocId, meta: &DocMeta, space: SpaceId) {
        if !self.docs.contains(&doc) {
            self.keep_meta(doc, (meta.clone(), space));
        }
    }
}
