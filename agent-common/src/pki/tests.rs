use std::time::{Duration, SystemTime};

use super::*;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn new_ca() -> RootCa {
    RootCa::generate().expect("generate CA")
}

fn issue(ca: &RootCa, role: NodeRole) -> NodeIdentity {
    let spec = NodeCertSpec::new(NodeId::generate().unwrap(), role).address("127.0.0.1");
    NodeIdentity::issue(ca, &spec).expect("issue node identity")
}

/// The subjectAltNames of a certificate, as text, read with x509-parser independently of
/// `NodeCertificate`.
fn sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let ext = cert.subject_alternative_name().unwrap().unwrap();
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(s) => format!("dns:{s}"),
            x509_parser::extensions::GeneralName::IPAddress(b) => format!("ip:{b:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

// --- CA ---

#[test]
fn ca_round_trips_through_pem_and_still_signs() {
    let ca = new_ca();
    let cert_pem = ca.cert_pem();
    let key_pem = ca.key_pem();
    assert!(cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(key_pem.contains("PRIVATE KEY"));

    let loaded = RootCa::from_pem(&cert_pem, &key_pem).expect("load CA");
    assert_eq!(loaded.digest(), ca.digest());
    assert_eq!(loaded.certificate(), ca.certificate());
    assert_eq!(loaded.key_pem(), key_pem);
    // The digest is sha256 of the DER, as join tokens pin it.
    assert_eq!(
        ca.digest().to_hex(),
        hex::encode(sha256(ca.certificate().der()))
    );
    assert_eq!(ca.digest().to_hex().len(), 64);

    // A certificate signed by the reloaded CA verifies against the original certificate.
    let node = issue(&loaded, NodeRole::Worker);
    ca.certificate()
        .verify_node(node.certificate(), SystemTime::now())
        .expect("signed by the reloaded CA");
    // And two CAs never share a digest.
    assert_ne!(new_ca().digest(), ca.digest());
}

#[test]
fn ca_refuses_a_key_that_is_not_its_own() {
    let ca = new_ca();
    let other = new_ca();
    let err = RootCa::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
}

#[test]
fn bad_pem_and_garbage_are_errors_not_panics() {
    let ca = new_ca();
    assert!(matches!(
        RootCa::from_pem("not pem", &ca.key_pem()),
        Err(PkiError::Pem { .. })
    ));
    assert!(matches!(
        RootCa::from_pem(
            &ca.cert_pem(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        ),
        Err(PkiError::ParseKey(_))
    ));
    let garbage_cert = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        CaCertificate::from_pem(garbage_cert),
        Err(PkiError::Certificate { .. })
    ));
    assert!(matches!(
        NodeCertificate::from_pem(garbage_cert),
        Err(PkiError::Certificate { .. })
    ));
    assert!(NodeCertificate::parse(b"").is_err());
    assert!(NodeCertificate::parse(&[0x30, 0x82, 0xff, 0xff]).is_err());
    assert!(NodeCsr::from_der(vec![1, 2, 3]).is_err());
    assert!(NodeCsr::from_pem("").is_err());
    assert!(NodeKey::from_pem("").is_err());

    // A node certificate is not a CA, and the CA is not a node certificate.
    let node = issue(&ca, NodeRole::Manager);
    let err = CaCertificate::from_der(node.certificate().der().to_vec()).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
    let err = NodeCertificate::parse(ca.certificate().der()).unwrap_err();
    assert!(err.to_string().contains("CA certificate"), "{err}");
}

// --- node certificates ---

#[test]
fn signed_csr_reads_back_id_role_expiry_and_addresses() {
    let ca = new_ca();
    let key = NodeKey::generate().unwrap();
    let csr = key.csr().unwrap();
    // The CSR survives PEM, as it would the wire.
    let csr = NodeCsr::from_pem(&csr.to_pem()).unwrap();
    let id = NodeId::generate().unwrap();
    let issued_at = SystemTime::now();
    let spec = NodeCertSpec::new(id.clone(), NodeRole::Manager)
        .address("10.1.2.3")
        .address("manager-1.example")
        .validity(30 * DAY)
        .issued_at(issued_at);
    let cert = ca.sign_node(&csr, &spec).unwrap();

    // Read back from PEM, as a restarting node would.
    let cert = NodeCertificate::from_pem(&cert.to_pem()).unwrap();
    assert_eq!(cert.node_id(), &id);
    assert_eq!(cert.role(), NodeRole::Manager);
    let secs = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(cert.not_after()), secs(issued_at + 30 * DAY));
    assert_eq!(
        secs(cert.not_before()),
        secs(issued_at - NOT_BEFORE_BACKDATE)
    );
    assert_eq!(cert.serial().as_bytes().len(), 16);

    let names = sans(cert.der());
    assert!(names.contains(&format!("dns:{id}")), "{names:?}");
    assert!(
        names.contains(&"dns:flotilla-manager".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"dns:manager-1.example".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"ip:[10, 1, 2, 3]".to_string()), "{names:?}");

    // The subject is what the brief says: CN = node ID, OU = role.
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
    assert_eq!(
        parsed.subject().to_string(),
        format!("CN={id}, OU=flotilla-manager")
    );
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);

    let identity = NodeIdentity::new(key, cert, ca.certificate().clone()).unwrap();
    ca.certificate()
        .verify_node(identity.certificate(), SystemTime::now())
        .unwrap();
}

#[test]
fn default_validity_is_ninety_days() {
    let ca = new_ca();
    let node = issue(&ca, NodeRole::Worker);
    let cert = node.certificate();
    let validity = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert_eq!(validity, 90 * DAY + NOT_BEFORE_BACKDATE);
}

#[test]
fn worker_and_manager_certificates_are_told_apart() {
    let ca = new_ca();
    let worker = issue(&ca, NodeRole::Worker);
    let manager = issue(&ca, NodeRole::Manager);
    assert_eq!(worker.role(), NodeRole::Worker);
    assert_eq!(manager.role(), NodeRole::Manager);
    manager
        .certificate()
        .require_role(NodeRole::Manager)
        .unwrap();
    let err = worker
        .certificate()
        .require_role(NodeRole::Manager)
        .unwrap_err();
    assert!(matches!(
        err,
        PkiError::WrongRole {
            actual: NodeRole::Worker,
            required: NodeRole::Manager,
            ..
        }
    ));
    assert!(err.to_string().contains(worker.node_id().as_str()), "{err}");
    assert!(sans(worker.certificate().der()).contains(&"dns:flotilla-worker".to_string()));
    assert!(!sans(worker.certificate().der()).contains(&"dns:flotilla-manager".to_string()));
}

#[test]
fn the_ca_ignores_what_the_csr_asks_for() {
    // A CSR claiming to be a manager with a chosen CN still yields the spec's identity.
    let ca = new_ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["flotilla-manager".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "flotilla-manager");
    let csr = params.serialize_request(&key).unwrap();
    let csr = NodeCsr::from_der(csr.der().to_vec()).unwrap();
    let id = NodeId::generate().unwrap();
    let cert = ca
        .sign_node(&csr, &NodeCertSpec::new(id.clone(), NodeRole::Worker))
        .unwrap();
    assert_eq!(cert.role(), NodeRole::Worker);
    assert_eq!(cert.node_id(), &id);
    assert!(!sans(cert.der()).contains(&"dns:flotilla-manager".to_string()));
}

#[test]
fn a_tampered_csr_is_refused() {
    let key = NodeKey::generate().unwrap();
    let mut der = key.csr().unwrap().der().to_vec();
    // Flip a bit in the signature (the last bytes of the CSR).
    let last = der.len() - 2;
    der[last] ^= 0x01;
    let err = NodeCsr::from_der(der).unwrap_err();
    assert!(matches!(err, PkiError::ParseCsr(_)), "{err}");
}

#[test]
fn bad_addresses_and_validity_are_refused() {
    let ca = new_ca();
    let csr = NodeKey::generate().unwrap().csr().unwrap();
    let id = NodeId::generate().unwrap();
    for bad in ["10.0.0.1:2377", "not a name", ""] {
        let spec = NodeCertSpec::new(id.clone(), NodeRole::Worker).address(bad);
        let err = ca.sign_node(&csr, &spec).unwrap_err();
        assert!(matches!(err, PkiError::Address(_)), "{bad:?}: {err}");
    }
    let spec = NodeCertSpec::new(id.clone(), NodeRole::Worker).validity(Duration::ZERO);
    assert!(matches!(
        ca.sign_node(&csr, &spec),
        Err(PkiError::Validity(_))
    ));
    let spec = NodeCertSpec::new(id, NodeRole::Worker).validity(Duration::from_secs(u64::MAX / 2));
    assert!(matches!(
        ca.sign_node(&csr, &spec),
        Err(PkiError::Validity(_))
    ));
}

#[test]
fn role_names_node_id_shapes_and_wildcards_are_refused_as_addresses() {
    let ca = new_ca();
    let csr = NodeKey::generate().unwrap().csr().unwrap();
    let id = NodeId::generate().unwrap();
    let other_id = NodeId::generate().unwrap().to_string();
    for bad in [
        "flotilla-manager",
        "FLOTILLA-MANAGER",
        "flotilla-manager.",
        "flotilla-worker",
        "flotilla-client",
        "flotilla-root-ca",
        other_id.as_str(),
        &other_id.to_uppercase(),
        "*.example.com",
    ] {
        let err = check_node_address(bad).unwrap_err();
        assert!(
            matches!(err, PkiError::ReservedAddress { .. }),
            "{bad:?}: {err}"
        );
        let spec = NodeCertSpec::new(id.clone(), NodeRole::Worker).address(bad);
        assert!(ca.sign_node(&csr, &spec).is_err(), "{bad:?} was signed");
    }
    let msg = check_node_address("flotilla-manager")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("role name"), "{msg}");
    for good in [
        "10.0.0.1",
        "::1",
        "node-a",
        "node-a.example.com",
        "flotilla",
    ] {
        check_node_address(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
    }
    // IP addresses become IP SANs, names DNS SANs.
    let spec = NodeCertSpec::new(id, NodeRole::Worker)
        .address("10.1.2.3")
        .address("node-a");
    let cert = ca.sign_node(&csr, &spec).unwrap();
    let names = sans(cert.der());
    assert!(names.iter().any(|n| n.starts_with("ip:")), "{names:?}");
    assert!(names.contains(&"dns:node-a".to_string()), "{names:?}");
}

#[test]
fn an_expired_certificate_is_refused_by_the_verifier() {
    let ca = new_ca();
    let spec = NodeCertSpec::new(NodeId::generate().unwrap(), NodeRole::Worker)
        .issued_at(SystemTime::now() - 100 * DAY)
        .validity(90 * DAY);
    let node = NodeIdentity::issue(&ca, &spec).unwrap();
    let now = SystemTime::now();
    assert!(node.certificate().is_expired(now));
    assert!(node.certificate().needs_renewal(now));
    let err = ca
        .certificate()
        .verify_node(node.certificate(), now)
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    // The same certificate verified while it was valid passes: the refusal is the expiry.
    ca.certificate()
        .verify_node(node.certificate(), now - 50 * DAY)
        .unwrap();
}

#[test]
fn a_certificate_from_another_ca_is_refused_by_the_verifier() {
    let ca = new_ca();
    let other = new_ca();
    let node = issue(&other, NodeRole::Manager);
    let err = ca
        .certificate()
        .verify_node(node.certificate(), SystemTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    other
        .certificate()
        .verify_node(node.certificate(), SystemTime::now())
        .unwrap();
}

#[test]
fn renewal_is_due_when_a_third_of_the_validity_remains() {
    let ca = new_ca();
    let issued_at = SystemTime::now();
    let spec = NodeCertSpec::new(NodeId::generate().unwrap(), NodeRole::Worker)
        .issued_at(issued_at)
        .validity(90 * DAY);
    let cert = NodeIdentity::issue(&ca, &spec)
        .unwrap()
        .certificate()
        .clone();
    assert!(!cert.needs_renewal(issued_at));
    assert!(!cert.needs_renewal(issued_at + 59 * DAY));
    assert!(cert.needs_renewal(issued_at + 61 * DAY));
    assert!(cert.needs_renewal(issued_at + 200 * DAY));
    assert!(!cert.is_expired(issued_at + 89 * DAY));
    assert!(cert.is_expired(issued_at + 91 * DAY));
    // A validity far shorter than the backdate: not due when fresh.
    let spec = NodeCertSpec::new(NodeId::generate().unwrap(), NodeRole::Worker)
        .issued_at(issued_at)
        .validity(Duration::from_secs(12));
    let short = NodeIdentity::issue(&ca, &spec)
        .unwrap()
        .certificate()
        .clone();
    assert!(!short.needs_renewal(issued_at + Duration::from_secs(1)));
    assert!(!short.needs_renewal(issued_at + Duration::from_secs(7)));
    assert!(short.needs_renewal(issued_at + Duration::from_secs(9)));
}

#[test]
fn identity_refuses_a_certificate_for_another_key() {
    let ca = new_ca();
    let node = issue(&ca, NodeRole::Worker);
    let err = NodeIdentity::new(
        NodeKey::generate().unwrap(),
        node.certificate().clone(),
        ca.certificate().clone(),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");

    // And the PEM round trip of a whole identity works.
    let reloaded = NodeIdentity::from_pem(
        &node.key().to_pem(),
        &node.certificate().to_pem(),
        &node.ca().to_pem(),
    )
    .unwrap();
    assert_eq!(reloaded.node_id(), node.node_id());
}

#[test]
fn revocation_by_node_and_by_serial() {
    let ca = new_ca();
    let a = issue(&ca, NodeRole::Worker);
    let b = issue(&ca, NodeRole::Worker);
    let mut list = RevocationList::new();
    assert!(!list.is_revoked(a.certificate()));
    assert!(list.revoke_node(a.node_id().clone()));
    assert!(!list.revoke_node(a.node_id().clone()));
    assert!(list.is_revoked(a.certificate()));
    assert!(!list.is_revoked(b.certificate()));
    list.revoke_serial(b.certificate().serial().clone());
    assert!(list.is_revoked(b.certificate()));

    let shared = Revocations::default();
    let c = issue(&ca, NodeRole::Manager);
    assert!(!shared.is_revoked(c.certificate()));
    shared.replace(list);
    assert!(shared.is_revoked(a.certificate()));
    assert!(!shared.is_revoked(c.certificate()));
    let serial = CertSerial::from_hex(&c.certificate().serial().to_string()).unwrap();
    shared.revoke_serial(serial);
    assert!(shared.is_revoked(c.certificate()));
}

// --- node IDs and encoding ---

#[test]
fn node_ids_are_25_base36_characters() {
    let id = NodeId::generate().unwrap();
    assert_eq!(id.as_str().len(), 25);
    assert!(id
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
    assert_ne!(id, NodeId::generate().unwrap());
    assert_eq!(id.as_str().parse::<NodeId>().unwrap(), id);
    for bad in [
        "",
        "abc",
        "ABCDEFGHIJKLMNOPQRSTUVWXY",
        "zzzzzzzzzzzzzzzzzzzzzzzzz",
        "0123456789abcdefghijklmn-",
    ] {
        assert!(bad.parse::<NodeId>().is_err(), "{bad:?}");
    }
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
    assert!(serde_json::from_str::<NodeId>("\"nope\"").is_err());
    assert_eq!(
        serde_json::to_string(&NodeRole::Worker).unwrap(),
        "\"worker\""
    );
}

#[test]
fn base36_covers_the_whole_128_bit_range() {
    assert_eq!(base36_encode(0), "0".repeat(25));
    assert_eq!(base36_decode(&base36_encode(0)), Some(0));
    assert_eq!(base36_decode(&base36_encode(u128::MAX)), Some(u128::MAX));
    assert_eq!(base36_decode(&base36_encode(36)), Some(36));
    assert_eq!(base36_encode(35).chars().last(), Some('z'));
    // 36^25 > 2^128: the largest 25-digit strings do not fit.
    assert_eq!(base36_decode(&"z".repeat(25)), None);
    assert_eq!(base36_decode(&"0".repeat(24)), None);
}

#[test]
fn private_files_are_written_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("flotilla-pki-{}", NodeId::generate().unwrap()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ca.key");
    write_private_file(&path, b"first").unwrap();
    write_private_file(&path, b"second").unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let err = write_private_file(&dir.join("missing/ca.key"), b"x").unwrap_err();
    assert!(err.to_string().contains("failed to write"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- join tokens ---

#[test]
fn token_generates_parses_and_hashes() {
    let ca = new_ca();
    let token = JoinToken::generate(NodeRole::Worker, ca.digest()).unwrap();
    let text = token.to_string();
    let fields: Vec<&str> = text.split('-').collect();
    assert_eq!(fields.len(), 5, "{text}");
    assert_eq!(&fields[..3], &["FLTKN", "1", "worker"]);
    assert_eq!(fields[3], ca.digest().to_hex());
    assert_eq!(fields[4].len(), 25);

    let parsed = JoinToken::parse(&format!("  {text}\n")).unwrap();
    assert_eq!(parsed, token);
    assert_eq!(parsed.role(), NodeRole::Worker);
    assert_eq!(parsed.ca_digest(), ca.digest());
    parsed.check_ca(&ca.digest()).unwrap();

    let stored = token.token_hash();
    assert!(stored.matches(&parsed));
    stored.verify(&parsed).unwrap();
    assert_eq!(TokenHash::from_hex(&stored.to_hex()), Some(stored));
    assert_eq!(
        stored.to_hex(),
        hex::encode(sha256(fields[4].as_bytes())),
        "the stored hash is sha256 of the secret"
    );
    // The secret does not leak through Debug.
    assert!(!format!("{token:?}").contains(fields[4]));

    let manager = JoinToken::generate(NodeRole::Manager, ca.digest()).unwrap();
    assert!(manager.to_string().starts_with("FLTKN-1-manager-"));
    assert!(!stored.matches(&manager));
}

#[test]
fn token_parse_errors_say_what_is_wrong() {
    let ca = new_ca();
    let good = JoinToken::generate(NodeRole::Worker, ca.digest())
        .unwrap()
        .to_string();
    let digest = ca.digest().to_hex();
    let secret = good.rsplit('-').next().unwrap().to_string();

    let err = JoinToken::parse(&good.replacen("FLTKN", "SWMTKN", 1)).unwrap_err();
    assert!(matches!(err, TokenError::WrongPrefix { .. }), "{err}");
    assert!(err.to_string().contains("SWMTKN"));

    // Truncated anywhere: in the secret, in the digest, or down to a prefix.
    let err = JoinToken::parse(&good[..good.len() - 1]).unwrap_err();
    assert!(matches!(err, TokenError::Secret), "{err}");
    let err = JoinToken::parse(&good[..good.len() - 30]).unwrap_err();
    assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
    let err = JoinToken::parse(&format!("FLTKN-1-worker-{}-{secret}", &digest[..63])).unwrap_err();
    assert!(matches!(err, TokenError::DigestLength { len: 63 }), "{err}");
    let err = JoinToken::parse("FLTKN-1-worker").unwrap_err();
    assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
    assert!(matches!(
        JoinToken::parse("   "),
        Err(TokenError::Malformed { .. })
    ));

    let err = JoinToken::parse(&good.replacen("-1-", "-2-", 1)).unwrap_err();
    assert!(
        matches!(err, TokenError::UnsupportedVersion { .. }),
        "{err}"
    );
    let err = JoinToken::parse(&good.replacen("worker", "admin", 1)).unwrap_err();
    assert!(matches!(err, TokenError::UnknownRole { .. }), "{err}");
    let err = JoinToken::parse(&format!("FLTKN-1-worker-{}-{secret}", "g".repeat(64))).unwrap_err();
    assert!(matches!(err, TokenError::DigestNotHex), "{err}");
    let err = JoinToken::parse(&format!("FLTKN-1-worker-{digest}-{}", "Z".repeat(25))).unwrap_err();
    assert!(matches!(err, TokenError::Secret), "{err}");
    let err = JoinToken::parse(&format!("{good}-extra")).unwrap_err();
    assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
    // Non-ASCII input is an error, not a panic on a char boundary.
    assert!(JoinToken::parse("FLTKN-1-worker-ééééé-ü").is_err());
}

#[test]
fn a_tampered_digest_fails_the_ca_check() {
    let ca = new_ca();
    let good = JoinToken::generate(NodeRole::Manager, ca.digest())
        .unwrap()
        .to_string();
    // Change one hex digit of the digest: still a well-formed token, but it pins another CA.
    let digest = ca.digest().to_hex();
    let mut tampered_digest = digest.clone().into_bytes();
    tampered_digest[10] = if tampered_digest[10] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let tampered = good.replace(&digest, std::str::from_utf8(&tampered_digest).unwrap());
    let token = JoinToken::parse(&tampered).unwrap();
    let err = token.check_ca(&ca.digest()).unwrap_err();
    assert!(matches!(err, TokenError::CaMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&digest), "{err}");
    // The secret is untouched, so only the CA pin can catch this.
    assert!(JoinToken::parse(&good)
        .unwrap()
        .token_hash()
        .matches(&token));
}

#[test]
fn a_rotated_token_no_longer_matches() {
    let ca = new_ca();
    let old = JoinToken::generate(NodeRole::Worker, ca.digest()).unwrap();
    let mut stored = old.token_hash();
    assert!(stored.matches(&old));
    // Rotation: a new token, whose hash replaces the stored one.
    let new = JoinToken::generate(NodeRole::Worker, ca.digest()).unwrap();
    stored = new.token_hash();
    assert!(stored.matches(&new));
    assert!(!stored.matches(&old));
    let err = stored.verify(&old).unwrap_err();
    assert!(matches!(
        err,
        TokenError::Rejected {
            role: NodeRole::Worker
        }
    ));
    assert!(
        err.to_string().contains("flotilla join-token worker"),
        "{err}"
    );
}

#[test]
fn a_worker_token_relabelled_manager_does_not_match_the_manager_hash() {
    let ca = new_ca();
    let worker = JoinToken::generate(NodeRole::Worker, ca.digest()).unwrap();
    let manager = JoinToken::generate(NodeRole::Manager, ca.digest()).unwrap();
    let relabelled =
        JoinToken::parse(&worker.to_string().replacen("worker", "manager", 1)).unwrap();
    assert_eq!(relabelled.role(), NodeRole::Manager);
    assert!(!manager.token_hash().matches(&relabelled));
}
