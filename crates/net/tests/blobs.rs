//! Blobs over QUIC: a relay fetches a device's photo eagerly and passes it on to the user's
//! other devices, a peer that may not read a referring document gets nothing, a space fetched
//! on demand waits for the app to ask, and a transfer cut in the middle resumes.

#![allow(clippy::unwrap_used)]

mod support;

use automerge::ROOT;
use automerge::transaction::Transactable;
use ferry_net::{NetError, NetEvent, Node};
use ferry_store::{Access, BlobHash, BlobPolicy, DocKind, PeerInfo, SpaceId, Store};
use support::{connected, eventually, open, start};

fn grant(on: &Store, peer: &Store, addr: Option<&Node>, space: SpaceId, access: Access) {
    let mut info = on
        .peer(peer.peer_id())
        .unwrap()
        .unwrap_or_else(|| PeerInfo::new(peer.peer_id(), "peer"));
    info.addresses = addr.map(Node::local_addr).into_iter().collect();
    on.put_peer(&info).unwrap();
    on.grant(peer.peer_id(), space, access).unwrap();
}

fn photo(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A survey in `space` on `store` that refers to a new photo of `len` bytes.
fn survey_with_photo(store: &Store, space: SpaceId, len: usize) -> (ferry_store::DocId, BlobHash) {
    let hash = store.add_blob(&photo(len, len as u32)).unwrap();
    let survey = store.create_in(space, DocKind::Automerge).unwrap();
    store
        .change(survey, |tx| tx.put(ROOT, "photo", hash.reference()))
        .unwrap();
    (survey, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_fetches_a_photo_eagerly_and_passes_it_to_readers_only() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let [relay, phone, laptop, stranger] = [0, 1, 2, 3].map(|i| open(dirs[i].path()));
    let node_r = start(&relay).await;
    let alice = relay.create_space("alice").unwrap();
    let others = relay.create_space("others").unwrap();
    for device in [&phone, &laptop] {
        grant(&relay, device, None, alice, Access::ReadWrite);
        grant(device, &relay, Some(&node_r), alice, Access::ReadWrite);
    }
    grant(&relay, &stranger, None, others, Access::ReadWrite);
    grant(&stranger, &relay, Some(&node_r), others, Access::ReadWrite);

    // Taken offline on the phone: a survey and its photo.
    let (survey, hash) = survey_with_photo(&phone, alice, 3_000_000);
    let node_p = start(&phone).await;
    eventually("the photo on the relay", || relay.has_blob(hash)).await;
    assert_eq!(
        relay.read_blob(hash).unwrap(),
        phone.read_blob(hash).unwrap()
    );

    // The phone goes away; the laptop gets the survey and its photo from the relay.
    node_p.shutdown().await;
    let node_l = start(&laptop).await;
    eventually("the photo on the laptop", || laptop.has_blob(hash)).await;
    assert_eq!(
        laptop.info(survey).unwrap().digest,
        phone.info(survey).unwrap().digest
    );
    assert_eq!(
        laptop.read_blob(hash).unwrap(),
        phone.read_blob(hash).unwrap()
    );

    // A device of another user, who may not read the survey, gets nothing when it asks.
    let node_s = start(&stranger).await;
    eventually("the stranger connected", || {
        connected(&node_s, relay.peer_id())
    })
    .await;
    let asked = node_s.fetch_blob(hash).await;
    assert!(
        matches!(asked, Err(NetError::BlobUnavailable(h)) if h == hash),
        "{asked:?}"
    );
    assert!(!stranger.has_blob(hash));
    node_l.shutdown().await;
    node_s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_fetched_on_demand_waits_for_the_app_and_a_cut_transfer_resumes() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let [holder, taker] = [0, 1].map(|i| open(dirs[i].path()));
    let space = SpaceId::DEFAULT;
    let node_h = start(&holder).await;
    grant(&holder, &taker, None, space, Access::ReadWrite);
    grant(&taker, &holder, Some(&node_h), space, Access::ReadWrite);
    taker.set_blob_policy(space, BlobPolicy::OnDemand).unwrap();
    let len = 24 << 20;
    let (survey, hash) = survey_with_photo(&holder, space, len);

    let node_t = std::sync::Arc::new(start(&taker).await);
    let mut events = node_t.subscribe();
    eventually("the survey on the taker", || taker.info(survey).is_ok()).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !taker.has_blob(hash),
        "fetched although the space is on demand"
    );

    // The app asks; the connection is cut a third of the way in.
    let fetching = {
        let node_t = node_t.clone();
        tokio::spawn(async move { node_t.fetch_blob(hash).await })
    };
    let mut cut_at = 0;
    while let Ok(event) = events.recv().await {
        if let NetEvent::BlobProgress { received, .. } = event
            && received >= (len / 3) as u64
        {
            cut_at = received;
            node_t.disconnect(holder.peer_id());
            break;
        }
    }
    assert!(fetching.await.unwrap().is_err(), "the cut fetch completed");
    let (_, kept) = taker.partial_blob(hash).unwrap();
    assert!(
        kept >= cut_at,
        "kept {kept} of the {cut_at} verified before the cut"
    );

    // Asked again once connected, it fetches the rest only.
    // (The state may still say connected for a moment after the cut; the connection itself is
    // closed, and a new one is live only once it has been dialed again.)
    eventually("connected again", || {
        connected(&node_t, holder.peer_id()) && node_t.connection_stats(holder.peer_id()).is_some()
    })
    .await;
    let before = node_t
        .connection_stats(holder.peer_id())
        .unwrap()
        .udp_rx
        .bytes;
    assert_eq!(node_t.fetch_blob(hash).await.unwrap(), len as u64);
    let moved = node_t
        .connection_stats(holder.peer_id())
        .unwrap()
        .udp_rx
        .bytes
        - before;
    let rest = len as u64 - kept;
    println!("resumed at {kept} of {len}: {moved} bytes moved for the {rest} left");
    assert!(moved < rest + rest / 10, "{moved} bytes for {rest}");
    assert_eq!(
        taker.read_blob(hash).unwrap(),
        holder.read_blob(hash).unwrap()
    );
    assert!(taker.partial_blob(hash).is_none());
    node_t.shutdown().await;
    node_h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_peer_fetches_blobs_but_cannot_add_them_to_a_document() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let [relay, viewer] = [0, 1].map(|i| open(dirs[i].path()));
    let node_r = start(&relay).await;
    let space = relay.create_space("site").unwrap();
    grant(&relay, &viewer, None, space, Access::Read);
    grant(&viewer, &relay, Some(&node_r), space, Access::ReadWrite);
    let (survey, photo_hash) = survey_with_photo(&relay, space, 500_000);

    let node_v = start(&viewer).await;
    eventually("the photo on the viewer", || viewer.has_blob(photo_hash)).await;

    // The viewer attaches a photo of its own: the change is refused, and the relay neither
    // takes the photo nor lets anyone fetch it.
    let mut events = node_v.subscribe();
    let own = viewer.add_blob(&photo(300_000, 77)).unwrap();
    viewer
        .change(survey, |tx| tx.put(ROOT, "second photo", own.reference()))
        .unwrap();
    let refused = tokio::time::timeout(support::PATIENCE, async {
        loop {
            if let Ok(NetEvent::Session {
                event: ferry_proto::Event::Refused { doc, .. },
                ..
            }) = events.recv().await
                && doc == survey
            {
                return;
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "the relay did not refuse the change");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!relay.has_blob(own));
    assert!(relay.docs_referring_to(own).unwrap().is_empty());
    assert!(!relay.may_fetch_blob(viewer.peer_id(), own).unwrap());
    node_v.shutdown().await;
}
