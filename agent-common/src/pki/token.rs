//! Join tokens: `FLTKN-1-<role>-<ca digest>-<secret>`.
//!
//! - `FLTKN`: the prefix (Flotilla token);
//! - `1`: the format version;
//! - `<role>`: `manager` or `worker`, the role the token admits;
//! - `<ca digest>`: 64 lowercase hex digits, sha256 of the root CA certificate's DER
//!   ([`CaDigest`]): the joining node refuses a manager whose CA does not hash to this;
//! - `<secret>`: 25 characters of `[0-9a-z]`, 128 random bits in base 36.
//!
//! Managers store only [`TokenHash`]es (sha256 of the secret) and compare in constant time.
//! Rotating a token is generating a new one and replacing the stored hash: the old token no
//! longer matches.

use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;

use super::ca::CaDigest;
use super::node::NodeRole;
use super::{base36_decode, base36_encode, random_base36, sha256, BASE36_LEN};

/// The first field of every join token.
pub const TOKEN_PREFIX: &str = "FLTKN";

/// The token format version this code writes and reads.
pub const TOKEN_VERSION: &str = "1";

const FORMAT_HINT: &str = "FLTKN-1-<manager|worker>-<64 hex digits>-<25 characters of [0-9a-z]>";

/// Errors of join tokens: reading them, and checking them against a cluster.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The operating system's random source failed.
    #[error("failed to generate a join token: the operating system's random source failed")]
    Random,
    /// The token does not have the five dash-separated fields.
    #[error("failed to parse the join token: {reason}; a token looks like {FORMAT_HINT}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The first field is not `FLTKN`.
    #[error("failed to parse the join token: it starts with {found:?}, not {TOKEN_PREFIX:?}; is this a token from another tool?")]
    WrongPrefix {
        /// The first field found.
        found: String,
    },
    /// The version field is not one this code reads.
    #[error("failed to parse the join token: format version {found:?} is not supported (expected {TOKEN_VERSION:?})")]
    UnsupportedVersion {
        /// The version field found.
        found: String,
    },
    /// The role field is neither `manager` nor `worker`.
    #[error("failed to parse the join token: role {found:?} is not \"manager\" or \"worker\"")]
    UnknownRole {
        /// The role field found.
        found: String,
    },
    /// The CA digest field is not 64 characters long.
    #[error("failed to parse the join token: the CA digest has {len} characters, expected 64 hex digits; was the token truncated?")]
    DigestLength {
        /// The digest field's length.
        len: usize,
    },
    /// The CA digest field holds something other than hex digits.
    #[error("failed to parse the join token: the CA digest is not hexadecimal")]
    DigestNotHex,
    /// The secret field is not 25 base-36 characters.
    #[error("failed to parse the join token: the secret must be 25 characters of [0-9a-z]; was the token truncated?")]
    Secret,
    /// The token pins a different CA than the cluster's.
    #[error("this token belongs to another cluster (CA digest {pinned}): it pins that CA, but the manager at this address has CA {actual}; use a join token of this manager's cluster (`flotilla join-token worker` on one of its managers), or check that the connection is not being intercepted")]
    CaMismatch {
        /// The CA digest in the token.
        pinned: CaDigest,
        /// The CA digest actually seen.
        actual: CaDigest,
    },
    /// The token's secret does not match the stored hash.
    #[error("the {role} join token is not valid: it is wrong or was rotated; get the current one with `flotilla join-token {role}` on a manager")]
    Rejected {
        /// The role the token claimed.
        role: NodeRole,
    },
}

/// A join token: the role it admits, the CA it pins and its secret. `Display` writes the full
/// token (secret included); `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    role: NodeRole,
    ca_digest: CaDigest,
    secret: String,
}

impl JoinToken {
    /// A new token for `role`, pinning `ca_digest`, with a fresh 128-bit secret.
    pub fn generate(role: NodeRole, ca_digest: CaDigest) -> Result<Self, TokenError> {
        let secret = random_base36().map_err(|_| TokenError::Random)?;
        Ok(Self {
            role,
            ca_digest,
            secret,
        })
    }

    /// The token for `role` derived from `key` (secret key material only managers hold, e.g.
    /// the CA private key) and a rotation `nonce`: the same inputs give the same token, so
    /// managers can print the current token again while the replicated store keeps only its
    /// hash and the nonce. Rotating is choosing a new nonce.
    pub fn derive(role: NodeRole, ca_digest: CaDigest, key: &[u8], nonce: &str) -> Self {
        let mut input = Vec::with_capacity(key.len() + nonce.len() + 48);
        input.extend_from_slice(b"flotilla-join-token\0");
        input.extend_from_slice(role.as_str().as_bytes());
        input.push(0);
        input.extend_from_slice(nonce.as_bytes());
        input.push(0);
        input.extend_from_slice(key);
        let digest = sha256(&input);
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Self {
            role,
            ca_digest,
            secret: base36_encode(u128::from_be_bytes(first)),
        }
    }

    /// Reads a token; surrounding whitespace (a pasted newline) is ignored. The CA digest is
    /// accepted in either case; everything else must be as written by [`JoinToken::generate`].
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Malformed {
                reason: "it is empty".into(),
            });
        }
        let fields: Vec<&str> = token.split('-').collect();
        if fields[0] != TOKEN_PREFIX {
            return Err(TokenError::WrongPrefix {
                found: fields[0].chars().take(16).collect(),
            });
        }
        if fields.len() != 5 {
            return Err(TokenError::Malformed {
                reason: format!("it has {} dash-separated fields, expected 5", fields.len()),
            });
        }
        if fields[1] != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion {
                found: fields[1].chars().take(16).collect(),
            });
        }
        let role = match fields[2] {
            "manager" => NodeRole::Manager,
            "worker" => NodeRole::Worker,
            other => {
                return Err(TokenError::UnknownRole {
                    found: other.chars().take(16).collect(),
                })
            }
        };
        let digest = fields[3];
        if digest.len() != 64 {
            return Err(TokenError::DigestLength { len: digest.len() });
        }
        let ca_digest = CaDigest::from_hex(digest).ok_or(TokenError::DigestNotHex)?;
        let secret = fields[4];
        if secret.len() != BASE36_LEN || base36_decode(secret).is_none() {
            return Err(TokenError::Secret);
        }
        Ok(Self {
            role,
            ca_digest,
            secret: secret.to_string(),
        })
    }

    /// The role this token admits.
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// The CA digest this token pins.
    pub fn ca_digest(&self) -> CaDigest {
        self.ca_digest
    }

    /// What a manager stores instead of the token: sha256 of the secret.
    pub fn token_hash(&self) -> TokenHash {
        TokenHash(sha256(self.secret.as_bytes()))
    }

    /// Succeeds when `actual` (the digest of the CA the other side presents) is the pinned one.
    /// A joining node calls this before trusting anything from a manager; a manager calls it to
    /// tell "token of another cluster" from "wrong secret".
    pub fn check_ca(&self, actual: &CaDigest) -> Result<(), TokenError> {
        if bool::from(self.ca_digest.as_bytes().ct_eq(actual.as_bytes())) {
            Ok(())
        } else {
            Err(TokenError::CaMismatch {
                pinned: self.ca_digest,
                actual: *actual,
            })
        }
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        Self::parse(s)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}-{}",
            self.role.as_str(),
            self.ca_digest.to_hex(),
            self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("role", &self.role)
            .field("ca_digest", &self.ca_digest)
            .field("secret", &"[secret]")
            .finish()
    }
}

/// The stored form of a join token: sha256 of its secret. Stored as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// True when `token`'s secret hashes to this (compared in constant time). The role is not
    /// part of the hash: the manager picks the stored hash by `token.role()`, so a worker
    /// token relabelled `manager` does not match the manager hash.
    pub fn matches(&self, token: &JoinToken) -> bool {
        bool::from(self.0.ct_eq(&token.token_hash().0))
    }

    /// Checks a presented token against this stored hash, with a message that says what to do.
    pub fn verify(&self, token: &JoinToken) -> Result<(), TokenError> {
        if self.matches(token) {
            Ok(())
        } else {
            Err(TokenError::Rejected { role: token.role() })
        }
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads a stored hash; `None` unless it is 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        CaDigest::from_hex(s).map(|d| Self(*d.as_bytes()))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}
