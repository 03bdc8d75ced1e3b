//! Image references as users type them: `busybox`, `busybox:1.36`,
//! `127.0.0.1:5000/team/app:v2`, `app@sha256:…`. Parsing follows Docker's
//! rules: the part before the first `/` is a registry host only if it contains
//! `.` or `:` or is `localhost`; a missing tag means `latest`. Names without a
//! registry are kept short (`busybox:latest`, not `docker.io/library/busybox`),
//! since Flotilla has no default public registry.
//!
//! Pure parsing, shared by the engine (pull, create, tag) and the manager's
//! control API (a service's image is checked before the spec is stored), so
//! both refuse the same references with the same words.

use std::fmt;

/// Why a reference was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid reference format {input:?}: {reason} (e.g. busybox, busybox:1.36, 127.0.0.1:5000/team/app:v2)")]
pub struct ReferenceError {
    input: String,
    reason: &'static str,
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host[:port], if the name starts with one.
    pub registry: Option<String>,
    /// Repository path inside the registry (`team/app`).
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a digest.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@digest]`.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let err = |reason| ReferenceError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("empty name"));
        }
        if input.len() > 512 {
            return Err(err("longer than 512 characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| err("digest must start with sha256:"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err("digest must be 64 hex characters"));
                }
                (rest, Some(format!("sha256:{}", hex.to_ascii_lowercase())))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(err(
                    "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_string()), path)
            }
            _ => (None, name),
        };
        if let Some(port) = registry
            .as_deref()
            .and_then(|r| r.split_once(':'))
            .map(|p| p.1)
        {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("registry port must be a number"));
            }
        }
        if repository.is_empty() {
            return Err(err("empty repository name"));
        }
        for component in repository.split('/') {
            let ok = !component.is_empty()
                && component.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && component.as_bytes()[0].is_ascii_alphanumeric()
                && component.as_bytes()[component.len() - 1].is_ascii_alphanumeric();
            if !ok {
                return Err(err(
                    "repository name must be lowercase letters, digits and separators (. _ -)",
                ));
            }
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The repository as shown in `images`: `[registry/]repository`.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// `name:tag`, the key under which a tagged image is stored.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Reference;

    #[test]
    fn short_name_gets_latest() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry, None);
        assert_eq!(r.repository, "busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "busybox:latest");
    }

    #[test]
    fn registry_with_port_and_tag() {
        let r = Reference::parse("127.0.0.1:5000/team/app:v2").unwrap();
        assert_eq!(r.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v2"));
    }

    #[test]
    fn localhost_is_a_registry_but_a_plain_path_is_not() {
        assert_eq!(
            Reference::parse("localhost/app")
                .unwrap()
                .registry
                .as_deref(),
            Some("localhost")
        );
        assert_eq!(Reference::parse("team/app").unwrap().registry, None);
    }

    #[test]
    fn digest_only() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("app@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "UPPER",
            "app:",
            "app:-x",
            "app@sha256:12",
            "/app",
            "a//b",
            "app:t/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
