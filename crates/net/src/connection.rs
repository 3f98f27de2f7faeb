//! What a QUIC connection says about itself: how it closed, the peer it proved, and the
//! transport settings ferry gives it.

use ferry_store::PeerId;
use quinn::Connection;

use crate::{CloseCode, NetConfig, NetError, tls};

/// Whether the peer refused this replica in the TLS handshake (a certificate it does not
/// accept): the connection closed with a TLS alert.
pub(crate) fn refused_in_handshake(conn: &Connection) -> bool {
    let is_alert = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match conn.close_reason() {
        Some(quinn::ConnectionError::ConnectionClosed(close)) => is_alert(close.error_code),
        Some(quinn::ConnectionError::TransportError(e)) => is_alert(e.code),
        _ => false,
    }
}

/// Whether the peer closed `conn` because it kept another connection.
pub(crate) fn closed_as_duplicate(conn: &Connection) -> bool {
    closed_with(conn, CloseCode::Duplicate)
}

/// Whether the peer closed `conn` with `code`.
pub(crate) fn closed_with(conn: &Connection, code: CloseCode) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if CloseCode::of(close.error_code) == Some(code)
    )
}

/// The peer id a connection's handshake proved.
pub(crate) fn peer_of(conn: &Connection) -> Result<PeerId, NetError> {
    let certs = conn
        .peer_identity()
        .and_then(|identity| {
            identity
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(NetError::BadCertificate)?;
    tls::peer_id_of(certs.first().ok_or(NetError::BadCertificate)?)
}

/// Streams a peer may have open at once on a connection: the session's and blob transfers.
const MAX_STREAMS: u32 = 16;

/// The transport of a connection this node dials (`dialed`) or accepts. Only the dialing side
/// sends keep-alives: the other's idle timer restarts on every packet it receives, so one side's
/// pings and their acknowledgements keep both alive, and the side behind a NAT (the one that
/// dials, as a device dials its relay) is the one whose mapping needs them. A relay so sends no
/// pings of its own to its idle devices, half the packets it would otherwise handle.
pub(crate) fn transport(config: &NetConfig, dialed: bool) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(dialed.then_some(config.keep_alive));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok());
    // The session's stream and blob transfers: a peer opens at most this many at once.
    transport.max_concurrent_bidi_streams(MAX_STREAMS.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport
}

/// An error and its sources, for people.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
