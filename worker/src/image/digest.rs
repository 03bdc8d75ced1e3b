//! [`Digest`]: a content digest checked to be `sha256:` followed by 64
//! lowercase hex digits. It is the only value allowed to name a file in the
//! content store (`blobs/sha256/<hex>`), and every descriptor a registry or an
//! archive hands us is parsed into one (serde refuses anything else while the
//! JSON is parsed), so a digest such as `sha256:/etc/crontab` or
//! `sha256:../../x` never reaches a path. Temporary files are named by
//! position, never by digest.
//!
//! This module does not hash streams (see `layer::HashReader`) or decide
//! where blobs live (see `store`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A `sha256:<64 lowercase hex>` digest. Constructed only by [`Digest::parse`]
/// (and serde, which calls it) or [`Digest::of`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// A string that is not a `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "invalid digest {shown:?}: a digest must be \"sha256:\" followed by 64 lowercase hex digits"
)]
pub struct InvalidDigest {
    /// The refused value, cut to 100 characters.
    pub shown: String,
}

impl Digest {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<Digest, InvalidDigest> {
        let ok = s.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Digest(s.to_string()))
        } else {
            Err(InvalidDigest {
                shown: s.chars().take(100).collect(),
            })
        }
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(data))
        ))
    }

    /// The digest a finished hasher holds.
    pub fn from_hasher(hasher: sha2::Sha256) -> Digest {
        use sha2::Digest as _;
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits: the only file name a digest may give.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex digits, as progress lines show a layer.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl TryFrom<String> for Digest {
    type Error = InvalidDigest;
    fn try_from(s: String) -> Result<Digest, InvalidDigest> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::Digest;

    #[test]
    fn only_sha256_with_64_lowercase_hex_parses() {
        let good = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let d = Digest::parse(&good).unwrap();
        assert_eq!(d.hex(), &good[7..]);
        assert_eq!(d.short(), "0123456789ab");
        for bad in [
            "".to_string(),
            "sha256:".to_string(),
            "sha256:/etc/crontab".to_string(),
            "sha256:../../x".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "a".repeat(65)),
            format!("sha256:{}/..", "a".repeat(61)),
            format!("sha512:{}", "a".repeat(64)),
            format!("SHA256:{}", "a".repeat(64)),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn serde_refuses_path_shaped_digests_while_parsing() {
        #[derive(serde::Deserialize)]
        struct Desc {
            #[allow(dead_code)]
            digest: Digest,
        }
        let err = serde_json::from_str::<Desc>(r#"{"digest":"sha256:/tmp/victim"}"#)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("invalid digest"), "{err}");
        let ok = format!(r#"{{"digest":"sha256:{}"}}"#, "f".repeat(64));
        assert!(serde_json::from_str::<Desc>(&ok).is_ok());
        assert_eq!(Digest::of(b"").hex().len(), 64);
    }
}
