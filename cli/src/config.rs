//! Registry credentials, kept the way Docker's `config.json` keeps them:
//! `{"auths": {"host:port": {"auth": "base64(user:pass)"}}}` in
//! `$FLOTILLA_CONFIG/config.json` (default `~/.flotilla/config.json`), written
//! with mode 0600. Keys this client does not know are preserved. This module
//! reads and writes that file only; the `login`/`logout` commands decide when.

use anyhow::{anyhow, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One registry's stored credentials.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth: String,
    /// A registry identity token, when the registry issued one.
    #[serde(
        default,
        rename = "identitytoken",
        skip_serializing_if = "String::is_empty"
    )]
    pub identity_token: String,
    /// Everything else in the entry, kept as found.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The whole config file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ConfigFile {
    /// Credentials by registry host[:port].
    #[serde(default)]
    pub auths: BTreeMap<String, AuthEntry>,
    /// Other top-level keys, kept as found.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Decoded credentials for one registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// Identity token, if any.
    pub identity_token: String,
}

/// The config file path: `DIR/config.json` for `--config DIR` (or
/// `$FLOTILLA_CONFIG`), else `~/.flotilla/config.json`.
pub fn config_path(config_dir: Option<&Path>, home: Option<&Path>) -> Result<PathBuf> {
    match (config_dir, home) {
        (Some(dir), _) => Ok(dir.join("config.json")),
        (None, Some(home)) => Ok(home.join(".flotilla").join("config.json")),
        (None, None) => Err(anyhow!(
            "cannot find the config directory: HOME is not set (set FLOTILLA_CONFIG or --config)"
        )),
    }
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Ok(ConfigFile::default()),
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
        }
    }

    /// Writes the file atomically with mode 0600, creating its directory (0700).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("failed to set permissions on {}", dir.display()))?;
        }
        let tmp = dir.join(format!(".config.json.{}.tmp", std::process::id()));
        let text = serde_json::to_string_pretty(self)?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow!("failed to write {}: {e}", path.display())
        })
    }

    /// Stores credentials for `registry`.
    pub fn set(&mut self, registry: &str, username: &str, password: &str) {
        let entry = self.auths.entry(registry.to_string()).or_default();
        entry.auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        entry.identity_token.clear();
    }

    /// Removes `registry`'s credentials; false when there were none.
    pub fn remove(&mut self, registry: &str) -> bool {
        self.auths.remove(registry).is_some()
    }

    /// The decoded credentials for `registry`, if stored.
    pub fn get(&self, registry: &str) -> Result<Option<Credentials>> {
        let Some(entry) = self.auths.get(registry) else {
            return Ok(None);
        };
        let mut creds = Credentials {
            identity_token: entry.identity_token.clone(),
            ..Credentials::default()
        };
        if !entry.auth.is_empty() {
            let bad = || {
                anyhow!("the stored credentials for {registry} are corrupt: log in again with `flotilla login {registry}`")
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(entry.auth.trim())
                .map_err(|_| bad())?;
            let text = String::from_utf8(raw).map_err(|_| bad())?;
            let (user, pass) = text.split_once(':').ok_or_else(bad)?;
            creds.username = user.to_string();
            creds.password = pass.to_string();
        }
        Ok(Some(creds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_credentials_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"auths":{"old:5000":{"auth":"dTpw","email":"x@y"}},"psFormat":"table {{.ID}}"}"#,
        )
        .unwrap();
        let mut cfg = ConfigFile::load(&path).unwrap();
        cfg.set("127.0.0.1:5000", "alice", "s3:cret");
        cfg.save(&path).unwrap();

        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let raw: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            raw["auths"]["127.0.0.1:5000"]["auth"],
            "YWxpY2U6czM6Y3JldA=="
        );
        assert_eq!(raw["auths"]["old:5000"]["email"], "x@y");
        assert_eq!(raw["psFormat"], "table {{.ID}}");

        let back = ConfigFile::load(&path).unwrap();
        let creds = back.get("127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("alice", "s3:cret")
        );
        assert_eq!(back.get("old:5000").unwrap().unwrap().username, "u");
        assert_eq!(back.get("none:1").unwrap(), None);
    }

    #[test]
    fn missing_file_is_empty_and_save_creates_private_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join("config.json");
        let mut cfg = ConfigFile::load(&path).unwrap();
        assert!(cfg.auths.is_empty());
        cfg.set("r:1", "u", "p");
        cfg.save(&path).unwrap();
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        let mut cfg = ConfigFile::load(&path).unwrap();
        assert!(cfg.remove("r:1"));
        assert!(!cfg.remove("r:1"));
        cfg.save(&path).unwrap();
        assert!(ConfigFile::load(&path).unwrap().auths.is_empty());
    }

    #[test]
    fn corrupt_files_and_entries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(&path, r#"{"auths":{"r:1":{"auth":"!!!"}}}"#).unwrap();
        let cfg = ConfigFile::load(&path).unwrap();
        assert!(cfg
            .get("r:1")
            .unwrap_err()
            .to_string()
            .contains("log in again"));
    }

    #[test]
    fn config_path_prefers_explicit_dir() {
        assert_eq!(
            config_path(Some(Path::new("/c")), Some(Path::new("/h"))).unwrap(),
            PathBuf::from("/c/config.json")
        );
        assert_eq!(
            config_path(None, Some(Path::new("/h"))).unwrap(),
            PathBuf::from("/h/.flotilla/config.json")
        );
        assert!(config_path(None, None).is_err());
    }
}
