//! The cluster's public-key infrastructure: its root CA, node identities and join tokens.
//!
//! What this module owns:
//! - [`RootCa`]: the cluster's self-signed ECDSA P-256 root, made once by
//!   `flotilla-manager init`, and its public half [`CaCertificate`] with the [`CaDigest`]
//!   (sha256 of the certificate's DER) that join tokens pin.
//! - Node identities: a node makes its own key ([`NodeKey`]) and a [`NodeCsr`]; the CA signs it
//!   into a [`NodeCertificate`] whose subject carries the node's [`NodeId`] (CN) and its
//!   [`NodeRole`] (OU `flotilla-manager` / `flotilla-worker`). [`NodeIdentity`] is a node's key,
//!   certificate and CA together, ready for [`crate::tls`].
//! - [`RevocationList`] / [`Revocations`]: removed nodes and revoked serials, checked by the TLS
//!   verifiers in [`crate::tls`].
//! - [`JoinToken`] and [`TokenHash`]: `FLTKN-1-<role>-<ca digest>-<secret>`.
//!
//! What it does not do: store anything (the manager's store keeps the CA key, token hashes and
//! revocations), talk to the network, or decide which RPC a role may call. The format of every
//! certificate and token is described in `docs/pki.md`.

mod ca;
mod node;
mod revocation;
mod token;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use ca::{check_node_address, CaCertificate, CaDigest, RootCa};
pub use node::{
    CertSerial, NodeCertSpec, NodeCertificate, NodeCsr, NodeId, NodeIdentity, NodeKey, NodeRole,
};
pub use revocation::{RevocationList, Revocations};
pub use token::{JoinToken, TokenError, TokenHash, TOKEN_PREFIX, TOKEN_VERSION};

/// How long a node certificate is valid unless the issuer says otherwise: 90 days.
pub const DEFAULT_NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// How long the root CA is valid unless `init` says otherwise: 20 years (as swarm's).
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);

/// How far before its issue time a node certificate's `notBefore` is set, so that a peer whose
/// clock is a little behind still accepts a fresh certificate.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The common name of the root CA's subject.
pub const CA_COMMON_NAME: &str = "flotilla-root-ca";

/// Errors of the certificate side of the PKI (CA, keys, CSRs, node certificates).
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The operating system's random source failed.
    #[error("failed to get random bytes from the operating system")]
    Random,
    /// Key generation failed.
    #[error("failed to generate a key pair")]
    GenerateKey(#[source] rcgen::Error),
    /// A private key could not be read.
    #[error("failed to read the private key: not a PKCS#8 PEM key of a supported algorithm")]
    ParseKey(#[source] rcgen::Error),
    /// A certificate signing request could not be made.
    #[error("failed to create the certificate signing request")]
    CreateCsr(#[source] rcgen::Error),
    /// A certificate signing request was malformed or its signature did not verify.
    #[error("failed to read the certificate signing request: malformed, or its signature does not match its key")]
    ParseCsr(#[source] rcgen::Error),
    /// The CA could not sign a certificate.
    #[error("failed to sign the {what} certificate")]
    Sign {
        /// Which certificate: "root CA" or "node".
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// PEM text did not hold the expected block.
    #[error("failed to read the {what} from PEM: {reason}")]
    Pem {
        /// What was expected ("CA certificate", "node certificate", ...).
        what: &'static str,
        /// Why it could not be read.
        reason: String,
    },
    /// DER bytes were not a readable X.509 certificate.
    #[error("failed to parse the {what}: {reason}")]
    Certificate {
        /// What was expected ("CA certificate", "node certificate").
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A node ID was not 25 characters of `[0-9a-z]`.
    #[error("failed to parse node ID {0:?}: expected 25 characters of [0-9a-z]")]
    NodeId(String),
    /// A role name was neither `manager` nor `worker`.
    #[error("failed to parse node role {0:?}: expected \"manager\" or \"worker\"")]
    Role(String),
    /// An address for a certificate's subjectAltName was neither an IP address nor a DNS name.
    #[error("failed to use {0:?} as a certificate address: expected an IP address or a DNS name, without a port")]
    Address(String),
    /// An advertise address that would let the node's certificate pass for another identity: a
    /// role name (`flotilla-manager`, ...), a name in the reserved `flotilla-` namespace, or the
    /// shape of a node ID.
    #[error("the advertise address {address:?} is refused: {reason}; use this node's IP address or its own DNS name")]
    ReservedAddress {
        /// The address as given.
        address: String,
        /// Why it is reserved.
        reason: &'static str,
    },
    /// A validity period was zero or did not fit in a date.
    #[error("failed to set the certificate validity: {0}")]
    Validity(String),
    /// A private key and a certificate do not belong together.
    #[error("failed to pair the private key with the {what}: the certificate was issued for another key")]
    KeyMismatch {
        /// Which certificate ("root CA certificate", "node certificate").
        what: &'static str,
    },
    /// A node's certificate has the wrong role for what it asked.
    #[error("node {node_id} holds a {actual} certificate: this needs a {required} certificate")]
    WrongRole {
        /// The caller.
        node_id: NodeId,
        /// The caller's role.
        actual: NodeRole,
        /// The role the operation needs.
        required: NodeRole,
    },
    /// A private file could not be written.
    #[error("failed to write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of the certificate side of the PKI.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// Writes `contents` to `path` readable and writable by its owner only (mode 0600), for private
/// keys. The file is written beside its final name and renamed over it, so a crash leaves either
/// the old file or the new one, and the key is never readable by others, even briefly.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A stale temporary file may have the wrong mode: remove it first.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_err)
}

/// Fills `N` bytes from the ring provider's system random source.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| PkiError::Random)?;
    Ok(buf)
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Number of base-36 digits needed for any 128-bit value (36^25 > 2^128).
pub(crate) const BASE36_LEN: usize = 25;

const BASE36_DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Encodes a 128-bit value as exactly 25 lowercase base-36 digits, zero padded (swarm's node ID
/// and token secret alphabet).
pub(crate) fn base36_encode(mut value: u128) -> String {
    let mut out = [b'0'; BASE36_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE36_DIGITS[(value % 36) as usize];
        value /= 36;
    }
    out.iter().map(|&b| b as char).collect()
}

/// Decodes exactly 25 lowercase base-36 digits into a 128-bit value; `None` for a wrong length,
/// a character outside `[0-9a-z]`, or a value above 2^128 - 1.
pub(crate) fn base36_decode(s: &str) -> Option<u128> {
    if s.len() != BASE36_LEN {
        return None;
    }
    let mut value: u128 = 0;
    for c in s.bytes() {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        value = value.checked_mul(36)?.checked_add(u128::from(digit))?;
    }
    Some(value)
}

/// 128 random bits as 25 base-36 digits.
pub(crate) fn random_base36() -> Result<String> {
    Ok(base36_encode(u128::from_be_bytes(random_bytes::<16>()?)))
}

/// Encodes DER bytes as one PEM block.
pub(crate) fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der))
}

/// Reads the first PEM block of `pem_text` whose tag is one of `tags`.
pub(crate) fn pem_decode(pem_text: &str, tags: &[&str], what: &'static str) -> Result<Vec<u8>> {
    let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::Pem {
        what,
        reason: e.to_string(),
    })?;
    blocks
        .into_iter()
        .find(|b| tags.contains(&b.tag()))
        .map(pem::Pem::into_contents)
        .ok_or_else(|| PkiError::Pem {
            what,
            reason: format!("no {} block found", tags.join(" or ")),
        })
}

#[cfg(test)]
mod tests;
