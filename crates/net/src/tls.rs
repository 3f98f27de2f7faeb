//! Mutual TLS 1.3 pinned to peer ids: each replica presents a self-signed certificate for its
//! ed25519 key, and each side accepts only a key whose peer id is in its peer table (and, when
//! dialing, only the peer it dialed).

use std::sync::Arc;

use ferry_store::{Identity, PeerId, Store};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::NetError;

/// The ALPN protocol id: the sync protocol and its version.
pub const ALPN: &[u8] = b"ferry/2";

/// The name a dialer puts in its TLS hello. Certificates are not checked against names: the
/// peer id pins them.
/// The server name every ferry connection uses: identity comes from the pinned key, not names.
pub const SERVER_NAME: &str = "ferry";

/// An ed25519 SubjectPublicKeyInfo is this header and then the 32-byte key (RFC 8410).
const ED25519_SPKI_HEADER: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The peer id of a certificate's key: the certificate is parsed, its key must be ed25519, and
/// the id is derived from the key as [`PeerId::from_public_key`] does. The handshake proves the
/// peer holds that key.
pub fn peer_id_of(cert: &CertificateDer<'_>) -> Result<PeerId, NetError> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|_| NetError::BadCertificate)?;
    let spki = parsed.subject_public_key_info();
    let key = spki
        .as_ref()
        .strip_prefix(&ED25519_SPKI_HEADER[..])
        .filter(|key| key.len() == 32)
        .ok_or(NetError::BadCertificate)?;
    Ok(PeerId::from_public_key(key))
}

/// This replica's certificate and key, as TLS presents them.
#[derive(Debug)]
pub(crate) struct Credentials {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Credentials {
    pub(crate) fn of(store: &Store) -> Result<Self, NetError> {
        Self::of_identity(store.identity())
    }

    fn of_identity(identity: &Identity) -> Result<Self, NetError> {
        let key_pair = identity.key_pair();
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(|_| NetError::Certificate)?;
        let cert = params
            .self_signed(key_pair)
            .map_err(|_| NetError::Certificate)?;
        Ok(Self {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key_pair.serialize_der()),
        })
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The QUIC server side: requires a client certificate of a peer in `store`'s peer table.
pub(crate) fn server_config(
    store: &Store,
    credentials: &Credentials,
) -> Result<quinn::ServerConfig, NetError> {
    let provider = provider();
    let verifier = Arc::new(PinnedPeers {
        store: store.clone(),
        expected: None,
        provider: provider.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(NetError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(credentials.chain(), credentials.key())
        .map_err(NetError::Tls)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|_| NetError::Certificate)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// The QUIC client side, for dialing `expected`: accepts only its certificate, and only while it
/// is in `store`'s peer table.
pub fn client_config(store: &Store, expected: PeerId) -> Result<quinn::ClientConfig, NetError> {
    client_config_with(store, &Credentials::of(store)?, expected)
}

/// [`client_config`] presenting `identity` instead of the store's own: for a process that acts
/// as many peers at once (a load generator), with `store` holding the peer table.
pub fn client_config_as(
    store: &Store,
    identity: &Identity,
    expected: PeerId,
) -> Result<quinn::ClientConfig, NetError> {
    client_config_with(store, &Credentials::of_identity(identity)?, expected)
}

pub(crate) fn client_config_with(
    store: &Store,
    credentials: &Credentials,
    expected: PeerId,
) -> Result<quinn::ClientConfig, NetError> {
    let provider = provider();
    let verifier = Arc::new(PinnedPeers {
        store: store.clone(),
        expected: Some(expected),
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(NetError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(credentials.chain(), credentials.key())
        .map_err(NetError::Tls)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|_| NetError::Certificate)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Accepts a certificate whose key's peer id is in the store's peer table (and is `expected`,
/// when set). The store is read at each handshake, so a peer added or removed takes effect for
/// the next connection.
#[derive(Debug)]
struct PinnedPeers {
    store: Store,
    expected: Option<PeerId>,
    provider: Arc<CryptoProvider>,
}

impl PinnedPeers {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let refuse = |why: &str| rustls::Error::General(why.to_string());
        let peer = peer_id_of(cert).map_err(|_| refuse("not a ferry certificate"))?;
        if self.expected.is_some_and(|expected| expected != peer) {
            return Err(refuse("not the peer dialed"));
        }
        match self.store.peer(peer) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(refuse("unknown peer")),
            Err(_) => Err(refuse("peer table unreadable")),
        }
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PinnedPeers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PinnedPeers {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The key a node signs QUIC stateless resets with, derived from the replica's own secret key,
/// so it is the same every time the replica's node starts. A node that restarted (after a
/// crash, say) receives packets of connections its previous run held; with the same key it
/// answers them with a reset the peer accepts, so the peer drops the dead connection and dials
/// again at once, instead of waiting out its idle timeout (45 s by default) first. (For that,
/// connection ids are [`RandomIds`]: quinn's default signs its ids with a key of each run's, and
/// drops packets whose id the new run did not sign, before any reset.)
pub(crate) struct ResetKey([u8; 32]);

impl ResetKey {
    pub(crate) fn of(store: &Store) -> Self {
        let secret = store.identity().key_pair().serialize_der();
        Self(blake3::derive_key(
            "ferry 2026-12 QUIC stateless reset key",
            &secret,
        ))
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(32);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let expected = blake3::keyed_hash(&self.0, data);
        // `blake3::Hash` compares in constant time.
        match <[u8; 32]>::try_from(signature) {
            Ok(given) if expected == blake3::Hash::from_bytes(given) => Ok(()),
            _ => Err(quinn::crypto::CryptoError),
        }
    }
}

/// Connection ids of 8 random bytes. Any id of that length may be one of a previous run's, so a
/// packet for a connection this node does not hold is answered with a stateless reset (quinn
/// rate-limits those) rather than dropped.
pub(crate) struct RandomIds;

impl quinn::ConnectionIdGenerator for RandomIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; 8]>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_the_peer_whose_key_it_carries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let credentials = Credentials::of(&store).unwrap();
        assert_eq!(peer_id_of(&credentials.cert).unwrap(), store.peer_id());
        assert!(peer_id_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }
}
