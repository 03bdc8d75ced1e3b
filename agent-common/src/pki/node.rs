//! Node identities: roles, node IDs, node keys and CSRs, and node certificates read back.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, KeyPair,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

use super::ca::{timestamp_to_system_time, CaCertificate, RootCa};
use super::{
    base36_decode, pem_decode, pem_encode, random_base36, PkiError, Result,
    DEFAULT_NODE_CERT_VALIDITY,
};

/// What a node is in the cluster. Carried in its certificate's subject as the organizational
/// unit (`OU=flotilla-manager` / `OU=flotilla-worker`), so a server can tell from a caller's
/// certificate alone whether it may call manager-only APIs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// A Raft member that serves the control API; also runs tasks.
    Manager,
    /// A node that only runs tasks.
    Worker,
    /// A remote `flotilla` client (`flotilla-manager client-cert`): may call
    /// the control API, never acts as a node.
    Client,
}

impl NodeRole {
    /// `"manager"` or `"worker"`: the word used in join tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
            NodeRole::Client => "client",
        }
    }

    /// The subject's OU for this role: `flotilla-manager` or `flotilla-worker`.
    pub fn org_unit(self) -> &'static str {
        match self {
            NodeRole::Manager => "flotilla-manager",
            NodeRole::Worker => "flotilla-worker",
            NodeRole::Client => "flotilla-client",
        }
    }

    /// The DNS subjectAltName every certificate of this role carries, and so the TLS server name
    /// a client verifies: connect to any manager with server name `flotilla-manager` and only a
    /// manager's certificate is accepted, whatever address it is reached at (as swarm's
    /// `swarm-manager`).
    pub fn server_name(self) -> &'static str {
        self.org_unit()
    }

    fn from_org_unit(ou: &str) -> Option<Self> {
        match ou {
            "flotilla-manager" => Some(NodeRole::Manager),
            "flotilla-worker" => Some(NodeRole::Worker),
            "flotilla-client" => Some(NodeRole::Client),
            _ => None,
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeRole {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "manager" => Ok(NodeRole::Manager),
            "worker" => Ok(NodeRole::Worker),
            "client" => Ok(NodeRole::Client),
            _ => Err(PkiError::Role(s.to_string())),
        }
    }
}

/// A node's ID: 128 random bits as 25 lowercase base-36 characters (as swarm's), chosen by the
/// manager that admits the node and carried as its certificate's CN.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// A new random node ID.
    pub fn generate() -> Result<Self> {
        Ok(Self(random_base36()?))
    }

    /// The ID's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        match base36_decode(s) {
            Some(_) => Ok(Self(s.to_string())),
            None => Err(PkiError::NodeId(s.to_string())),
        }
    }
}

impl TryFrom<String> for NodeId {
    type Error = PkiError;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// A node's private key (ECDSA P-256). It never leaves the node: the node sends a [`NodeCsr`].
pub struct NodeKey {
    pair: KeyPair,
}

impl NodeKey {
    /// Generates a new ECDSA P-256 key.
    pub fn generate() -> Result<Self> {
        let pair =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::GenerateKey)?;
        Ok(Self { pair })
    }

    /// Loads a PKCS#8 PEM key.
    pub fn from_pem(key_pem: &str) -> Result<Self> {
        let pair = KeyPair::from_pem(key_pem).map_err(PkiError::ParseKey)?;
        Ok(Self { pair })
    }

    /// The key as PKCS#8 PEM. Secret: write it with [`super::write_private_file`].
    pub fn to_pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// The key in the form rustls takes.
    pub fn to_rustls(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.pair.serialize_der().into())
    }

    /// The raw public key (for EC keys, the uncompressed point).
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.public_key_raw()
    }

    /// A certificate signing request for this key. Its subject is a placeholder: the CA takes only
    /// the public key from it.
    pub fn csr(&self) -> Result<NodeCsr> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "flotilla-node-csr");
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.pair)
            .map_err(PkiError::CreateCsr)?;
        NodeCsr::from_der(csr.der().to_vec())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey([secret])")
    }
}

/// A node's certificate signing request, checked on read: it parses and its signature matches
/// its public key (proof that the sender holds the private key).
#[derive(Clone)]
pub struct NodeCsr {
    der: Vec<u8>,
    public_key: rcgen::PublicKey,
}

impl NodeCsr {
    /// Reads and verifies a DER-encoded CSR.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self> {
        let der: Vec<u8> = der.into();
        let parsed = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(&der[..]),
        )
        .map_err(PkiError::ParseCsr)?;
        Ok(Self {
            der,
            public_key: parsed.public_key,
        })
    }

    /// Reads and verifies a PEM `CERTIFICATE REQUEST`.
    pub fn from_pem(pem_text: &str) -> Result<Self> {
        Self::from_der(pem_decode(
            pem_text,
            &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"],
            "certificate signing request",
        )?)
    }

    /// The DER encoding (what goes over the wire).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The CSR as PEM.
    pub fn to_pem(&self) -> String {
        pem_encode("CERTIFICATE REQUEST", &self.der)
    }

    pub(super) fn public_key(&self) -> &rcgen::PublicKey {
        &self.public_key
    }
}

impl fmt::Debug for NodeCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCsr")
            .field("der_len", &self.der.len())
            .finish()
    }
}

/// What the CA puts in a node certificate; decided by the manager, never read from the CSR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertSpec {
    /// The node's ID (the subject's CN and a DNS subjectAltName).
    pub node_id: NodeId,
    /// The node's role (the subject's OU and a DNS subjectAltName).
    pub role: NodeRole,
    /// Advertise addresses, as IP addresses or DNS names without a port; each becomes a
    /// subjectAltName.
    pub addresses: Vec<String>,
    /// How long the certificate is valid from `issued_at`.
    pub validity: Duration,
    /// The issue time; `notBefore` is five minutes earlier to absorb clock skew.
    pub issued_at: SystemTime,
}

impl NodeCertSpec {
    /// A spec issued now, valid for [`DEFAULT_NODE_CERT_VALIDITY`], with no addresses.
    pub fn new(node_id: NodeId, role: NodeRole) -> Self {
        Self {
            node_id,
            role,
            addresses: Vec::new(),
            validity: DEFAULT_NODE_CERT_VALIDITY,
            issued_at: SystemTime::now(),
        }
    }

    /// Adds an advertise address (IP or DNS name, no port).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.addresses.push(address.into());
        self
    }

    /// Sets the validity period.
    pub fn validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// Sets the issue time (tests use a time in the past to make expired certificates).
    pub fn issued_at(mut self, issued_at: SystemTime) -> Self {
        self.issued_at = issued_at;
        self
    }
}

/// A certificate's serial number, shown as lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertSerial(Vec<u8>);

impl CertSerial {
    /// The serial's big-endian bytes as encoded in the certificate.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parses a serial from hex; `None` if it is not hex or is empty.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        (!bytes.is_empty()).then_some(Self(bytes))
    }
}

impl fmt::Display for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertSerial({self})")
    }
}

/// A node certificate read back: who it names and until when. Parsing does not verify the
/// signature; a server reads this from a peer certificate the TLS verifier already accepted
/// (see [`crate::tls::peer_node`]), or checks it with [`CaCertificate::verify_node`].
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCertificate {
    der: CertificateDer<'static>,
    node_id: NodeId,
    role: NodeRole,
    serial: CertSerial,
    not_before: SystemTime,
    not_after: SystemTime,
    public_key: Vec<u8>,
}

impl NodeCertificate {
    /// Reads a node certificate from DER: the subject must carry exactly one CN that is a node
    /// ID and exactly one OU that is a role, and it must not be a CA.
    pub fn parse(der: &[u8]) -> Result<Self> {
        let fail = |reason: String| PkiError::Certificate {
            what: "node certificate",
            reason,
        };
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| fail(e.to_string()))?;
        if !rest.is_empty() {
            return Err(fail("trailing bytes after the certificate".into()));
        }
        if cert.is_ca() {
            return Err(fail(
                "it is a CA certificate, not a node certificate".into(),
            ));
        }
        let subject = cert.subject();
        let single = |mut values: Vec<_>, name: &str| -> Result<String> {
            if values.len() != 1 {
                return Err(fail(format!(
                    "the subject has {} {name} values, expected exactly one",
                    values.len()
                )));
            }
            let value: &x509_parser::x509::AttributeTypeAndValue = values.remove(0);
            value
                .as_str()
                .map(str::to_string)
                .map_err(|_| fail(format!("the subject's {name} is not a string")))
        };
        let cn = single(subject.iter_common_name().collect(), "CN")?;
        let ou = single(subject.iter_organizational_unit().collect(), "OU")?;
        let node_id = cn
            .parse::<NodeId>()
            .map_err(|_| fail(format!("the subject's CN {cn:?} is not a node ID")))?;
        let role = NodeRole::from_org_unit(&ou)
            .ok_or_else(|| fail(format!("the subject's OU {ou:?} is not a flotilla role")))?;
        Ok(Self {
            der: CertificateDer::from(der.to_vec()),
            node_id,
            role,
            serial: CertSerial(cert.raw_serial().to_vec()),
            not_before: timestamp_to_system_time(cert.validity().not_before.timestamp()),
            not_after: timestamp_to_system_time(cert.validity().not_after.timestamp()),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Reads a node certificate from the first `CERTIFICATE` block of PEM text.
    pub fn from_pem(pem_text: &str) -> Result<Self> {
        Self::parse(&pem_decode(pem_text, &["CERTIFICATE"], "node certificate")?)
    }

    /// The node's ID (the subject's CN).
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The node's role (the subject's OU).
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// The certificate's serial number.
    pub fn serial(&self) -> &CertSerial {
        &self.serial
    }

    /// Start of validity (five minutes before issue).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// True when `now` is outside the validity period.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.not_after || now < self.not_before
    }

    /// True when less than a third of the validity period remains at `now` (or it has already
    /// expired): the node should ask for a new certificate. The validity period counts from
    /// the issue time: `not_before` is backdated by [`super::NOT_BEFORE_BACKDATE`] for clock
    /// skew, which would otherwise make a short-lived certificate look due at once.
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        let total = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
            .saturating_sub(super::NOT_BEFORE_BACKDATE);
        let remaining = self.not_after.duration_since(now).unwrap_or_default();
        remaining < total / 3
    }

    /// Succeeds when the certificate has `required` role; otherwise says which node asked with
    /// which role (e.g. "workers' certificates cannot call the control API").
    pub fn require_role(&self, required: NodeRole) -> Result<()> {
        if self.role == required {
            Ok(())
        } else {
            Err(PkiError::WrongRole {
                node_id: self.node_id.clone(),
                actual: self.role,
                required,
            })
        }
    }

    /// The DER encoding.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The certificate as PEM.
    pub fn to_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }

    /// Whether this certificate was issued for `key`.
    pub fn matches_key(&self, key: &NodeKey) -> bool {
        self.public_key == key.public_key_raw()
    }
}

impl fmt::Debug for NodeCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCertificate")
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What a node needs for mutual TLS: its key, its certificate and the cluster's CA certificate.
#[derive(Debug)]
pub struct NodeIdentity {
    key: NodeKey,
    cert: NodeCertificate,
    ca: CaCertificate,
}

impl NodeIdentity {
    /// Puts a node's parts together, checking that the certificate was issued for this key.
    /// (Whether the CA signed it is checked by [`CaCertificate::verify_node`], and by every peer.)
    pub fn new(key: NodeKey, cert: NodeCertificate, ca: CaCertificate) -> Result<Self> {
        if !cert.matches_key(&key) {
            return Err(PkiError::KeyMismatch {
                what: "node certificate",
            });
        }
        Ok(Self { key, cert, ca })
    }

    /// Loads a node's key, certificate and CA certificate from PEM.
    pub fn from_pem(key_pem: &str, cert_pem: &str, ca_pem: &str) -> Result<Self> {
        Self::new(
            NodeKey::from_pem(key_pem)?,
            NodeCertificate::from_pem(cert_pem)?,
            CaCertificate::from_pem(ca_pem)?,
        )
    }

    /// Makes a key, its CSR, and has `ca` sign it: how a manager makes its own identity at
    /// `init`, or a client certificate.
    pub fn issue(ca: &RootCa, spec: &NodeCertSpec) -> Result<Self> {
        let key = NodeKey::generate()?;
        let cert = ca.sign_node(&key.csr()?, spec)?;
        Self::new(key, cert, ca.certificate().clone())
    }

    /// The node's private key.
    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// The node's certificate.
    pub fn certificate(&self) -> &NodeCertificate {
        &self.cert
    }

    /// The cluster's CA certificate.
    pub fn ca(&self) -> &CaCertificate {
        &self.ca
    }

    /// The node's ID.
    pub fn node_id(&self) -> &NodeId {
        self.cert.node_id()
    }

    /// The node's role.
    pub fn role(&self) -> NodeRole {
        self.cert.role()
    }

    /// Replaces the certificate after a renewal (same key), checking it matches the key.
    pub fn with_certificate(self, cert: NodeCertificate) -> Result<Self> {
        Self::new(self.key, cert, self.ca)
    }
}
