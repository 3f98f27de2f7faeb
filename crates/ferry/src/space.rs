//! Spaces: the unit of sharing. Every document belongs to one space, chosen when it is
//! created, and each peer is granted access per space.

use ferry_store::{Access, BlobPolicy, DocId, DocKind, PeerId, SpaceId, Store};

use crate::doc::blocking;
use crate::{Counter, Doc, Error, MultiRegister, Register};

/// A space on a replica: creates documents in it, and grants peers access to it. Cheap to
/// clone.
///
/// A relay serving many users gives each user's devices their spaces, with no grant per
/// document: a device's new document in a space it may write reaches the relay, and from
/// there exactly the peers that may read that space.
///
/// # Examples
///
/// ```
/// use ferry::{Access, PeerId, Replica};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let relay = Replica::open(dir.path()).await?;
/// let alices_phone: PeerId = "aebagbafaydqqcikbmga2dqpca".parse()?;
/// relay.allow_peer(alices_phone, Access::None).await?; // known, but sees nothing yet
///
/// let alice = relay.create_space("alice").await?;
/// alice.grant(alices_phone, Access::ReadWrite).await?;
/// let notes = alice.create_doc().await?;
/// assert_eq!(relay.store().access(alices_phone, notes.id())?, Access::ReadWrite);
/// assert_eq!(alice.docs()?, vec![notes.id()]);
///
/// alice.revoke(alices_phone).await?; // at once, in open sessions too
/// assert_eq!(relay.store().access(alices_phone, notes.id())?, Access::None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Space {
    store: Store,
    id: SpaceId,
}

impl Space {
    pub(crate) fn new(store: Store, id: SpaceId) -> Self {
        Self { store, id }
    }

    /// The space's id, as peers know it.
    pub fn id(&self) -> SpaceId {
        self.id
    }

    async fn create(&self, kind: DocKind) -> Result<DocId, Error> {
        let (store, space) = (self.store.clone(), self.id);
        blocking(move || store.create_in(space, kind).map_err(Error::from_store)).await
    }

    /// Creates an Automerge document in this space.
    pub async fn create_doc(&self) -> Result<Doc, Error> {
        let id = self.create(DocKind::Automerge).await?;
        Ok(Doc::new(self.store.clone(), id))
    }

    /// Creates a grow-only counter in this space.
    pub async fn create_counter(&self) -> Result<Counter, Error> {
        let id = self.create(DocKind::GCounter).await?;
        Ok(Counter::new(self.store.clone(), id))
    }

    /// Creates a counter that also goes down, in this space.
    pub async fn create_pn_counter(&self) -> Result<Counter, Error> {
        let id = self.create(DocKind::PNCounter).await?;
        Ok(Counter::new(self.store.clone(), id))
    }

    /// Creates a last-writer-wins register in this space.
    pub async fn create_register(&self) -> Result<Register, Error> {
        let id = self.create(DocKind::LwwRegister).await?;
        Ok(Register::new(self.store.clone(), id))
    }

    /// Creates a multi-value register in this space.
    pub async fn create_multi_register(&self) -> Result<MultiRegister, Error> {
        let id = self.create(DocKind::MvRegister).await?;
        Ok(MultiRegister::new(self.store.clone(), id))
    }

    /// Gives `peer` `access` to this space: [`Access::Read`] to receive its documents,
    /// [`Access::ReadWrite`] to also send changes and new documents, [`Access::None`] to
    /// revoke. The peer must be known ([`Replica::allow_peer`](crate::Replica::allow_peer) or
    /// [`add_peer`](crate::Replica::add_peer)). Takes effect at once, in open sessions too.
    pub async fn grant(&self, peer: PeerId, access: Access) -> Result<(), Error> {
        let (store, space) = (self.store.clone(), self.id);
        blocking(move || store.grant(peer, space, access).map_err(Error::from_store)).await
    }

    /// Revokes `peer`'s access to this space: nothing more of it goes to the peer, from now
    /// on, in open sessions too.
    pub async fn revoke(&self, peer: PeerId) -> Result<(), Error> {
        self.grant(peer, Access::None).await
    }

    /// Sets whether this replica fetches the blobs this space's documents refer to as soon as
    /// it learns of them ([`BlobPolicy::Eager`], the default) or only when the app asks
    /// ([`BlobPolicy::OnDemand`], through [`Replica::fetch_blob`](crate::Replica::fetch_blob)).
    /// Durable when it returns.
    pub async fn set_blob_policy(&self, policy: BlobPolicy) -> Result<(), Error> {
        let (store, space) = (self.store.clone(), self.id);
        blocking(move || Ok(store.set_blob_policy(space, policy)?)).await
    }

    /// Whether this replica fetches this space's blobs eagerly or on demand.
    pub fn blob_policy(&self) -> Result<BlobPolicy, Error> {
        Ok(self.store.blob_policy(self.id)?)
    }

    /// The documents held here in this space, in id order.
    pub fn docs(&self) -> Result<Vec<DocId>, Error> {
        let mut docs = self.store.docs_in(self.id)?;
        docs.retain(|doc| self.store.info(*doc).is_ok());
        Ok(docs)
    }
}
