//! What the network benches share: loopback addresses, and trust between two stores.

use std::net::SocketAddr;

use ferry_store::{Access, PeerInfo, SpaceId, Store};

/// Any free port on 127.0.0.1.
pub(crate) fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// `a` lets `b` read and write the default space, and dials it at `addr` if given.
pub(crate) fn trust(a: &Store, b: &Store, addr: Option<SocketAddr>) {
    let mut info = PeerInfo::new(b.peer_id(), "peer");
    info.addresses = addr.into_iter().collect();
    a.put_peer(&info).unwrap();
    a.grant(b.peer_id(), SpaceId::DEFAULT, Access::ReadWrite)
        .unwrap();
}
