//! The root CA: generating, loading and saving it, its digest, and signing node certificates.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use super::node::{NodeCertSpec, NodeCertificate, NodeCsr, NodeId, NodeRole};
use super::{
    pem_decode, pem_encode, random_bytes, sha256, PkiError, Result, CA_COMMON_NAME,
    DEFAULT_CA_VALIDITY, NOT_BEFORE_BACKDATE,
};

/// The sha256 digest of the root CA certificate's DER encoding: what a join token pins.
/// Shown and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaDigest([u8; 32]);

impl CaDigest {
    /// The digest of a certificate's DER bytes.
    pub fn of_der(der: &[u8]) -> Self {
        Self(sha256(der))
    }

    /// Wraps 32 raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({})", self.to_hex())
    }
}

/// The root CA's certificate, without its key: what every node keeps to trust its peers, and
/// what a joining node checks against its token's pin.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCertificate {
    der: CertificateDer<'static>,
    digest: CaDigest,
    not_after: SystemTime,
}

impl CaCertificate {
    /// Reads a CA certificate from DER, refusing anything that is not a CA certificate.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self> {
        let der: Vec<u8> = der.into();
        let what = "CA certificate";
        let (rest, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::Certificate {
                what,
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(PkiError::Certificate {
                what,
                reason: "trailing bytes after the certificate".into(),
            });
        }
        if !cert.is_ca() {
            return Err(PkiError::Certificate {
                what,
                reason: "it is not a CA certificate (basicConstraints CA is not set)".into(),
            });
        }
        let not_after = timestamp_to_system_time(cert.validity().not_after.timestamp());
        Ok(Self {
            digest: CaDigest::of_der(&der),
            der: CertificateDer::from(der),
            not_after,
        })
    }

    /// Reads a CA certificate from the first `CERTIFICATE` block of PEM text.
    pub fn from_pem(pem_text: &str) -> Result<Self> {
        Self::from_der(pem_decode(pem_text, &["CERTIFICATE"], "CA certificate")?)
    }

    /// The certificate's DER encoding.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The certificate as one PEM `CERTIFICATE` block.
    pub fn to_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }

    /// sha256 of the certificate's DER: what join tokens pin.
    pub fn digest(&self) -> CaDigest {
        self.digest
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Verifies that `cert` was issued by this CA and is valid at `now` (signature, validity
    /// period, key usage), as a TLS peer would. It does not check revocation.
    pub fn verify_node(&self, cert: &NodeCertificate, now: SystemTime) -> Result<()> {
        crate::tls::verify_node_certificate(self, cert, now)
    }
}

impl fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCertificate")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// The cluster's root certificate authority: its certificate and signing key. Only managers hold
/// it (the key lives in the replicated store, or in a 0600 file; see [`super::write_private_file`]).
pub struct RootCa {
    cert: CaCertificate,
    issuer: Issuer<'static, KeyPair>,
}

impl RootCa {
    /// Makes a new root CA: an ECDSA P-256 key and a self-signed certificate valid from now for
    /// [`DEFAULT_CA_VALIDITY`].
    pub fn generate() -> Result<Self> {
        Self::generate_at(SystemTime::now(), DEFAULT_CA_VALIDITY)
    }

    /// Makes a new root CA valid from `issued_at` (backdated by [`NOT_BEFORE_BACKDATE`]) for
    /// `validity`.
    pub fn generate_at(issued_at: SystemTime, validity: Duration) -> Result<Self> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::GenerateKey)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        // Every cluster's CA gets its own subject, so a certificate from another cluster is
        // refused as "unknown issuer" rather than as a bad signature from a same-named CA.
        let cluster_tag = hex::encode(random_bytes::<8>()?);
        dn.push(
            DnType::OrganizationName,
            format!("flotilla cluster {cluster_tag}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        (params.not_before, params.not_after) = validity_window(issued_at, validity)?;
        let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
            what: "root CA",
            source,
        })?;
        let cert = CaCertificate::from_der(cert.der().to_vec())?;
        Ok(Self {
            cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root CA from its certificate and PKCS#8 key in PEM, checking they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert = CaCertificate::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::ParseKey)?;
        let what = "root CA certificate";
        let (_, parsed) =
            x509_parser::parse_x509_certificate(cert.der()).map_err(|e| PkiError::Certificate {
                what,
                reason: e.to_string(),
            })?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch { what });
        }
        let issuer =
            Issuer::from_ca_cert_der(cert.der(), key).map_err(|e| PkiError::Certificate {
                what,
                reason: e.to_string(),
            })?;
        Ok(Self { cert, issuer })
    }

    /// The CA certificate (public).
    pub fn certificate(&self) -> &CaCertificate {
        &self.cert
    }

    /// sha256 of the CA certificate's DER: what join tokens pin.
    pub fn digest(&self) -> CaDigest {
        self.cert.digest()
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.to_pem()
    }

    /// The CA's private key as PKCS#8 PEM. Secret: write it with
    /// [`super::write_private_file`] (mode 0600) or keep it in the replicated store only.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a node's CSR into its certificate. Only the CSR's public key is used (its signature
    /// proves the node holds the key): the node ID, role, addresses and validity come from
    /// `spec`, which the manager decides, never from the CSR's subject.
    ///
    /// The certificate has subject `CN=<node id>, OU=flotilla-<role>`, subjectAltNames DNS
    /// `<node id>`, DNS `flotilla-<role>` and the spec's addresses, EKU serverAuth + clientAuth,
    /// a random 127-bit serial, and is valid from `issued_at - 5 min` to `issued_at + validity`.
    pub fn sign_node(&self, csr: &NodeCsr, spec: &NodeCertSpec) -> Result<NodeCertificate> {
        self.sign_node_inner(csr, spec, true)
    }

    /// [`Self::sign_node`] without the address checks: tests make the certificate an attacker
    /// would want (a worker named `flotilla-manager`) to show that peers refuse it anyway.
    #[cfg(test)]
    pub(crate) fn sign_node_unchecked(
        &self,
        csr: &NodeCsr,
        spec: &NodeCertSpec,
    ) -> Result<NodeCertificate> {
        self.sign_node_inner(csr, spec, false)
    }

    fn sign_node_inner(
        &self,
        csr: &NodeCsr,
        spec: &NodeCertSpec,
        check: bool,
    ) -> Result<NodeCertificate> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.node_id.as_str());
        dn.push(DnType::OrganizationalUnitName, spec.role.org_unit());
        params.distinguished_name = dn;
        let mut sans = vec![
            dns_san(spec.node_id.as_str())?,
            dns_san(spec.role.server_name())?,
        ];
        for address in &spec.addresses {
            let san = if check {
                address_san(address)?
            } else {
                dns_san(address)?
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        (params.not_before, params.not_after) = validity_window(spec.issued_at, spec.validity)?;
        let cert = params
            .signed_by(csr.public_key(), &self.issuer)
            .map_err(|source| PkiError::Sign {
                what: "node",
                source,
            })?;
        NodeCertificate::parse(cert.der())
    }
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.cert.digest())
            .finish_non_exhaustive()
    }
}

/// A random positive serial of 16 bytes whose first byte is in 0x40..=0x7f, so its DER INTEGER
/// is exactly those 16 bytes (no sign padding, no stripped zeros).
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = random_bytes::<16>()?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn dns_san(name: &str) -> Result<SanType> {
    let ia5 = name
        .to_string()
        .try_into()
        .map_err(|_| PkiError::Address(name.to_string()))?;
    Ok(SanType::DnsName(ia5))
}

/// An IP address becomes an IP SAN; anything else must be a valid DNS name (no port) that
/// [`check_node_address`] accepts.
fn address_san(address: &str) -> Result<SanType> {
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    check_node_address(address)?;
    if rustls::pki_types::DnsName::try_from(address).is_err() {
        return Err(PkiError::Address(address.to_string()));
    }
    dns_san(address)
}

/// Checks an address a node advertises (and so gets into its certificate as a subjectAltName):
/// an IP address, or a DNS name that cannot make the certificate pass for another identity.
/// Refused: names in the reserved `flotilla-` namespace (the role names `flotilla-manager`,
/// `flotilla-worker`, `flotilla-client` are the TLS server names peers verify), names with the
/// shape of a node ID (25 characters of `[0-9a-z]`, the other DNS name every certificate
/// carries) and wildcards. DNS names compare without regard to case or a trailing dot, so
/// neither changes the verdict. Also refuses what is neither an IP address nor a DNS name.
pub fn check_node_address(address: &str) -> Result<()> {
    let a = address.trim();
    if a.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let reserved = |reason| PkiError::ReservedAddress {
        address: address.to_string(),
        reason,
    };
    let name = a.trim_end_matches('.').to_ascii_lowercase();
    if name.contains('*') {
        return Err(reserved("wildcard names are not node addresses"));
    }
    for role in [NodeRole::Manager, NodeRole::Worker, NodeRole::Client] {
        if name == role.server_name() {
            return Err(reserved(
                "it is a role name, which every certificate of that role carries and peers verify",
            ));
        }
    }
    if name.starts_with("flotilla-") {
        return Err(reserved(
            "names starting with \"flotilla-\" are reserved for the cluster's own identities",
        ));
    }
    if name.parse::<NodeId>().is_ok() {
        return Err(reserved(
            "it has the shape of a node ID (25 characters of [0-9a-z]), which names a node's certificate",
        ));
    }
    if a.is_empty() || rustls::pki_types::DnsName::try_from(a).is_err() {
        return Err(PkiError::Address(address.to_string()));
    }
    Ok(())
}

/// `[issued_at - backdate, issued_at + validity]` as rcgen dates, refusing what cannot be
/// represented rather than panicking.
fn validity_window(
    issued_at: SystemTime,
    validity: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime)> {
    if validity.is_zero() {
        return Err(PkiError::Validity("the validity period is zero".into()));
    }
    let not_before = issued_at
        .checked_sub(NOT_BEFORE_BACKDATE)
        .ok_or_else(|| PkiError::Validity("the issue time is out of range".into()))?;
    let not_after = issued_at
        .checked_add(validity)
        .ok_or_else(|| PkiError::Validity("the expiry is out of range".into()))?;
    Ok((to_offset(not_before)?, to_offset(not_after)?))
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Validity("dates before 1970 are not supported".into()))?
        .as_secs();
    let secs =
        i64::try_from(secs).map_err(|_| PkiError::Validity("the date is out of range".into()))?;
    // X.509 GeneralizedTime stops at year 9999.
    if secs >= 253_402_300_800 {
        return Err(PkiError::Validity("the date is after the year 9999".into()));
    }
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| PkiError::Validity(format!("the date is out of range: {e}")))
}

/// Seconds since the epoch (possibly negative) as a `SystemTime`, saturating at the epoch's far
/// side rather than panicking.
pub(super) fn timestamp_to_system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}
