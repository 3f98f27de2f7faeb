//! The replica's key pair, kept in its store directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_crdt::ReplicaId;
use rcgen::{KeyPair, PKCS_ED25519};

use crate::PeerId;

/// The key file's name inside the store directory.
const KEY_FILE: &str = "identity.key";

/// A replica's key pair (ed25519, PKCS#8) and the ids derived from it.
///
/// The QUIC layer builds its self-signed certificate from [`Identity::key_pair`]; peers pin the
/// [`PeerId`], which is derived from the public key, so nobody else can claim it.
#[derive(Debug)]
pub struct Identity {
    key_pair: KeyPair,
    peer_id: PeerId,
}

impl Identity {
    /// Reads the key file in `dir`, or creates one (readable by the owner only) if there is none.
    /// A key file that others may read or write is refused, as ssh refuses such a private key:
    /// anyone who read it could pose as this replica to every peer.
    pub(crate) fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(KEY_FILE);
        match fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                let mode = meta.permissions().mode() & 0o777;
                return Err(IdentityError::Exposed { path, mode });
            }
            _ => {}
        }
        match fs::read(&path) {
            Ok(der) => Self::from_pkcs8(&der).map_err(|_| IdentityError::Damaged { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key_pair =
                    KeyPair::generate_for(&PKCS_ED25519).map_err(|_| IdentityError::Generate)?;
                write_private(dir, &path, &key_pair.serialize_der())
                    .map_err(|source| IdentityError::Io { path, source })?;
                Ok(Self::new(key_pair))
            }
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    /// A fresh key pair, kept in memory only: for a process that acts as many peers (a load
    /// generator), not for a replica, whose identity lives in its store directory.
    pub fn generate() -> Result<Self, IdentityError> {
        KeyPair::generate_for(&PKCS_ED25519)
            .map(Self::new)
            .map_err(|_| IdentityError::Generate)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, rcgen::Error> {
        KeyPair::try_from(der).map(Self::new)
    }

    fn new(key_pair: KeyPair) -> Self {
        let peer_id = PeerId::from_public_key(key_pair.public_key_raw());
        Self { key_pair, peer_id }
    }

    /// This replica's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The replica id its counters, registers and Automerge changes are written under.
    pub fn replica_id(&self) -> ReplicaId {
        self.peer_id.replica_id()
    }

    /// The key pair, for building a TLS certificate.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }

    /// The raw ed25519 public key.
    pub fn public_key(&self) -> &[u8] {
        self.key_pair.public_key_raw()
    }
}

/// Writes `bytes` to `path` with mode 0600, durably: a temporary file, fsync, rename, then an
/// fsync of the directory, so a crash leaves either no key file or a whole one.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("key.tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// The replica's key pair could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("cannot access key file {path}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The key file is not a PKCS#8 key pair.
    #[error("key file {path} is damaged")]
    Damaged {
        /// The key file.
        path: PathBuf,
    },
    /// No key pair could be generated.
    #[error("cannot generate a key pair")]
    Generate,
    /// The key file may be read or written by others than its owner; it is not used.
    #[error("key file {path} is open to others (mode {mode:o}): make it private with `chmod 600`")]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}
