//! The image config JSON as Docker writes it: OCI's `config.md` plus Docker's
//! extras (`Healthcheck`, `OnBuild`, `Shell`, `container_config`…). Fields we
//! do not model are kept in `extra` so a parsed config re-serializes without
//! losing anything; the store still keeps the raw bytes, because the image id
//! is the digest of those exact bytes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The whole image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ImageConfig {
    /// CPU architecture (`amd64`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// Architecture variant (`v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Operating system (`linux`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The defaults for containers run from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RuntimeConfig>,
    /// The layer list.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per build step, including steps that made no layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Everything else (`container_config`, `docker_version`, `os.version`…).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `rootfs`: `type` is always `layers`; `diff_ids` are the digests of the
/// uncompressed layer tars, bottom first.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub typ: String,
    /// `sha256:` digests of the uncompressed layers, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// One `history` entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The author of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The command that made the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// A free comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step made no layer (so it has no diff_id).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The `config` object: defaults for containers (Docker's `container.Config`
/// subset that images carry).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `"80/tcp": {}` for each exposed port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// `KEY=value` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Default arguments (or the command, without an entrypoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Docker's healthcheck object (`Test`, `Interval`…), kept as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Value>,
    /// Deprecated Windows-only flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    /// Anonymous volumes created for each container: `"/data": {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    /// Initial working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// The executable and its first arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Build triggers for images built `FROM` this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// Metadata labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Signal that stops the container (`SIGTERM` when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Shell for shell-form commands (`["/bin/sh","-c"]` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Fields we do not model (`Hostname`, `AttachStdin`, `Image`…).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ImageConfig {
    /// The creation time as Unix seconds (0 when absent or unparseable).
    pub fn created_unix(&self) -> i64 {
        self.created.as_deref().map_or(0, parse_time)
    }
}

/// Parses an RFC 3339 time into Unix seconds; 0 when it cannot.
pub fn parse_time(s: &str) -> i64 {
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// The current time in RFC 3339 with nanoseconds, as Docker writes `created`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Unix seconds into RFC 3339 (for images without a creation time).
pub fn unix_to_rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_round_trips_with_unknown_fields() {
        let raw = r#"{"architecture":"amd64","config":{"Hostname":"","Env":["PATH=/bin"],"Cmd":["sh"],"Healthcheck":{"Test":["CMD","true"],"Interval":1000000000},"OnBuild":null,"Labels":{"a":"b"},"StopSignal":"SIGQUIT"},"container_config":{"Cmd":["x"]},"created":"2024-05-01T10:00:00.5Z","docker_version":"24.0.0","history":[{"created":"2024-05-01T10:00:00Z","created_by":"/bin/sh -c #(nop) ADD file:x in /"},{"created_by":"CMD [\"sh\"]","empty_layer":true}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let c: ImageConfig = serde_json::from_str(raw).unwrap();
        let rc = c.config.as_ref().unwrap();
        assert_eq!(rc.cmd.as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!(rc.stop_signal, "SIGQUIT");
        assert_eq!(rc.healthcheck.as_ref().unwrap()["Test"][1], "true");
        assert!(rc.extra.contains_key("Hostname"));
        assert!(c.extra.contains_key("container_config"));
        assert_eq!(c.created_unix(), 1714557600);
        assert!(c.history[1].empty_layer);
        let back: Value = serde_json::to_value(&c).unwrap();
        assert_eq!(back["docker_version"], "24.0.0");
        assert_eq!(back["config"]["Healthcheck"]["Interval"], 1000000000);
        assert_eq!(back["rootfs"]["diff_ids"][0], "sha256:aa");
    }
}
