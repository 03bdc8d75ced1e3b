//! The rules a container's definition must meet before anything is made
//! from it, shared by the engine (`create`) and the manager's control API
//! (`service create` and `service update`): a spec the manager stores is one
//! every node's engine accepts, and both refuse with the same words.
//!
//! What lives here: image references ([`image`], through
//! [`crate::reference`]), environment entries, hostnames, `--mount` specs,
//! volume names and container paths, memory and CPU limits, and the range of
//! durations and sizes. Pure functions over values; nothing here knows about
//! a particular node (how many CPUs it has) or about the store (whether a
//! name is taken): those checks stay with their owners.
//!
//! Ranges follow what the engine can represent, which is Docker's: sizes are
//! signed 64-bit byte counts ([`MAX_BYTES`]), durations signed 64-bit
//! nanosecond counts ([`MAX_DURATION_MS`], about 292 years). Anything larger
//! would wrap or overflow later, so it is refused here.

use crate::reference::{Reference, ReferenceError};
use crate::spec::{ContainerSpec, HealthCheck, ResourceAmounts, ServiceSpec, TaskSpec};

/// The smallest memory limit a container may have (Docker's minimum, 6 MiB).
pub const MIN_MEMORY_LIMIT: u64 = 6 << 20;
/// The smallest CPU limit a container may have (0.01 CPU, Docker's minimum).
pub const MIN_NANO_CPUS: u64 = 10_000_000;
/// The largest size in bytes (a signed 64-bit count, as the engine keeps it).
pub const MAX_BYTES: u64 = i64::MAX as u64;
/// The longest duration, in milliseconds: a signed 64-bit count of
/// nanoseconds (Docker's `time.Duration`), about 292 years.
pub const MAX_DURATION_MS: u64 = (i64::MAX / 1_000_000) as u64;
/// The longest hostname Linux accepts (`HOST_NAME_MAX`).
pub const MAX_HOSTNAME: usize = 64;

/// A refused value; the message names the value, what is wrong with it and
/// what is accepted instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The image reference does not parse.
    #[error("{0}")]
    Image(#[from] ReferenceError),
    /// An environment entry without a name, or with a NUL byte.
    #[error("invalid environment variable {value:?}: {reason}; use KEY=VALUE")]
    Env {
        /// The entry.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A hostname Linux or DNS would not take.
    #[error("invalid hostname {value:?}: {reason}")]
    Hostname {
        /// The hostname.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `--mount` spec that cannot be mounted.
    #[error("invalid mount {spec:?}: {reason}")]
    Mount {
        /// The spec as given.
        spec: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A memory limit under the minimum.
    #[error("invalid memory limit of {bytes} bytes: the minimum is 6MB (6291456 bytes); give at least 6m, or 0 for no limit")]
    MemoryLimit {
        /// The limit.
        bytes: u64,
    },
    /// A CPU limit under the minimum.
    #[error(
        "invalid CPU limit {cpus}: the minimum is 0.01 CPU; give at least 0.01, or 0 for no limit"
    )]
    CpuLimit {
        /// The limit, in CPUs (for the message).
        cpus: String,
    },
    /// A duration longer than the engine can count.
    #[error(
        "invalid {what} of {ms} ms: durations are at most {MAX_DURATION_MS} ms (about 292 years)"
    )]
    Duration {
        /// The flag or field.
        what: &'static str,
        /// The value.
        ms: u64,
    },
    /// A size larger than the engine can count.
    #[error("invalid {what} of {bytes} bytes: sizes are at most {MAX_BYTES} bytes (8 EiB)")]
    Size {
        /// The flag or field.
        what: &'static str,
        /// The value.
        bytes: u64,
    },
    /// A stop timeout out of range.
    #[error("invalid stop timeout {secs}: use -1 (wait forever), 0, or up to {} seconds", MAX_DURATION_MS / 1000)]
    StopTimeout {
        /// The timeout in seconds.
        secs: i64,
    },
    /// A health check whose test is not one the engine knows.
    #[error("invalid health check {cmd:?}: the test must start with CMD, CMD-SHELL or NONE, and CMD and CMD-SHELL need a command")]
    HealthCheck {
        /// The test.
        cmd: Vec<String>,
    },
}

/// Local result type.
pub type Result<T = (), E = Invalid> = std::result::Result<T, E>;

/// Parses an image reference (`busybox`, `127.0.0.1:5000/team/app:v2`).
pub fn image(reference: &str) -> Result<Reference> {
    Ok(Reference::parse(reference)?)
}

/// Checks one `KEY=VALUE` environment entry (a bare `KEY` is allowed: it
/// sets an empty-valued variable the way the engine passes it on).
pub fn env(entry: &str) -> Result {
    let bad = |reason| {
        Err(Invalid::Env {
            value: entry.to_string(),
            reason,
        })
    };
    let key = entry.split_once('=').map_or(entry, |(k, _)| k);
    if key.is_empty() {
        return bad("the name before '=' is empty");
    }
    if entry.contains('\0') {
        return bad("it contains a NUL byte");
    }
    Ok(())
}

/// Checks a container hostname (empty means the default, and is accepted):
/// at most 64 characters, dot-separated labels of letters, digits, `-` and
/// `_`, none empty or starting or ending with `-`.
pub fn hostname(name: &str) -> Result {
    if name.is_empty() {
        return Ok(());
    }
    let bad = |reason| {
        Err(Invalid::Hostname {
            value: name.to_string(),
            reason,
        })
    };
    if name.len() > MAX_HOSTNAME {
        return bad("longer than 64 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("a hostname cannot start or end with '.' or have '..'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("use only letters, digits, '-', '_' and '.' (no spaces)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a part between dots cannot start or end with '-'");
        }
    }
    Ok(())
}

/// Whether `name` is a valid volume name (Docker's rule, also the rule of
/// container names): `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, at most 255 characters.
pub fn volume_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Why `path` cannot be a mount's path inside a container (absolute, not
/// `/`, no `:` or NUL), if it cannot.
pub fn container_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("the container path must be absolute (start with /)")
    } else if path.trim_end_matches('/').is_empty() {
        Some("the container path cannot be /")
    } else if path.contains([':', '\0']) {
        Some("the container path cannot contain ':'")
    } else if path.split('/').any(|c| c == "..") {
        Some(
            "the container path cannot contain '..': give the path inside the container without it",
        )
    } else {
        None
    }
}

/// What a mount brings into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A named volume (made on first use), or an anonymous one when `None`.
    Volume(Option<String>),
    /// A host directory (an absolute path).
    Bind(String),
}

/// A parsed `--mount` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// What is mounted.
    pub source: MountSource,
    /// Where, inside the container (absolute).
    pub target: String,
    /// Mounted read-only.
    pub readonly: bool,
}

impl Mount {
    /// The engine's `-v` form of the mount (`source:/target[:ro]`).
    pub fn to_bind(&self) -> String {
        let ro = if self.readonly { ":ro" } else { "" };
        match &self.source {
            MountSource::Volume(None) => format!("{}{ro}", self.target),
            MountSource::Volume(Some(name)) => format!("{name}:{}{ro}", self.target),
            MountSource::Bind(path) => format!("{path}:{}{ro}", self.target),
        }
    }
}

/// Parses a `--mount` spec (`type=volume,source=data,target=/data`,
/// `type=bind,src=/host,dst=/ctr,readonly`): the options the engine can
/// carry out, with the same rules for paths and volume names as its `-v`.
pub fn mount(spec: &str) -> Result<Mount> {
    let bad = |reason: String| {
        Err(Invalid::Mount {
            spec: spec.to_string(),
            reason,
        })
    };
    let mut kind = "volume".to_string();
    let (mut source, mut target, mut readonly) = (String::new(), String::new(), false);
    for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
            None => (field.to_ascii_lowercase(), String::new()),
        };
        match key.as_str() {
            "type" => kind = value.to_ascii_lowercase(),
            "source" | "src" => source = value,
            "target" | "destination" | "dst" => target = value,
            "readonly" | "ro" => {
                readonly = match value.to_ascii_lowercase().as_str() {
                    "" | "1" | "true" => true,
                    "0" | "false" => false,
                    other => return bad(format!("readonly={other} is neither true nor false")),
                }
            }
            other => {
                return bad(format!(
                    "option {other:?} is not supported: use type=volume|bind,source=…,target=/…[,readonly]"
                ))
            }
        }
    }
    if target.is_empty() {
        return bad("it has no target: add target=/PATH (the path inside the container)".into());
    }
    if let Some(problem) = container_path_problem(&target) {
        return bad(format!("target {target:?}: {problem}"));
    }
    let source = match kind.as_str() {
        "volume" if source.is_empty() => MountSource::Volume(None),
        "volume" if source.contains('/') => {
            return bad(
                "a volume source is a volume name, not a path (use type=bind for a host path)"
                    .into(),
            )
        }
        "volume" if !volume_name(&source) => {
            return bad(format!(
                "volume name {source:?} is invalid: use 2 or more of [a-zA-Z0-9_.-], starting with a letter or digit"
            ))
        }
        "volume" => MountSource::Volume(Some(source)),
        "bind" if source.is_empty() => {
            return bad("a bind mount needs source=/HOST/PATH".into());
        }
        "bind" if !source.starts_with('/') => {
            return bad(format!(
                "bind source {source:?} is relative: a bind source must be an absolute host path"
            ))
        }
        "bind" if source.contains([':', '\0']) => {
            return bad("a bind source cannot contain ':'".into());
        }
        "bind" => MountSource::Bind(source),
        other => return bad(format!("type {other:?} is not supported (volume or bind)")),
    };
    Ok(Mount {
        source,
        target,
        readonly,
    })
}

/// Checks a memory limit in bytes: 0 (none) or at least 6 MiB, and
/// representable.
pub fn memory_limit(bytes: u64) -> Result {
    size("memory limit", bytes)?;
    if bytes != 0 && bytes < MIN_MEMORY_LIMIT {
        return Err(Invalid::MemoryLimit { bytes });
    }
    Ok(())
}

/// Checks a CPU limit in billionths of a CPU: 0 (none) or at least 0.01.
/// (Whether a node has that many CPUs is for the node, or the manager, to say.)
pub fn cpu_limit(nano_cpus: u64) -> Result {
    if nano_cpus != 0 && nano_cpus < MIN_NANO_CPUS {
        return Err(Invalid::CpuLimit {
            cpus: format!("{}", nano_cpus as f64 / 1e9),
        });
    }
    if nano_cpus > MAX_BYTES {
        return Err(Invalid::CpuLimit {
            cpus: format!("{}", nano_cpus as f64 / 1e9),
        });
    }
    Ok(())
}

/// Checks that a duration in milliseconds is representable.
pub fn duration_ms(what: &'static str, ms: u64) -> Result {
    if ms > MAX_DURATION_MS {
        return Err(Invalid::Duration { what, ms });
    }
    Ok(())
}

/// Checks that a size in bytes is representable.
pub fn size(what: &'static str, bytes: u64) -> Result {
    if bytes > MAX_BYTES {
        return Err(Invalid::Size { what, bytes });
    }
    Ok(())
}

/// Checks an engine stop timeout in seconds: -1 (wait forever) up to the
/// longest duration.
pub fn stop_timeout_secs(secs: i64) -> Result {
    if secs < -1 || secs > (MAX_DURATION_MS / 1000) as i64 {
        return Err(Invalid::StopTimeout { secs });
    }
    Ok(())
}

/// Checks a health check: its test and its durations.
pub fn health_check(hc: &HealthCheck) -> Result {
    let ok = match hc.cmd.split_first() {
        None => true,
        Some((first, _)) if first == "NONE" => true,
        Some((first, rest)) if first == "CMD" || first == "CMD-SHELL" => {
            rest.first().is_some_and(|c| !c.trim().is_empty())
        }
        Some(_) => false,
    };
    if !ok {
        return Err(Invalid::HealthCheck {
            cmd: hc.cmd.clone(),
        });
    }
    duration_ms("--health-interval", hc.interval_ms)?;
    duration_ms("--health-timeout", hc.timeout_ms)?;
    duration_ms("--health-start-period", hc.start_period_ms)
}

/// Checks everything about a container the engine would check at create
/// time without looking at the node: image, environment, hostname, mounts,
/// grace period and health check.
pub fn container(c: &ContainerSpec) -> Result {
    image(&c.image)?;
    for e in &c.env {
        env(e)?;
    }
    hostname(&c.hostname)?;
    for m in &c.mounts {
        mount(m)?;
    }
    duration_ms("--stop-grace-period", c.stop_grace_period_ms)?;
    if let Some(hc) = &c.healthcheck {
        health_check(hc)?;
    }
    Ok(())
}

fn amounts(what_cpu: &'static str, what_memory: &'static str, a: &ResourceAmounts) -> Result {
    size(what_memory, a.memory_bytes)?;
    if a.nano_cpus > MAX_BYTES {
        return Err(Invalid::Size {
            what: what_cpu,
            bytes: a.nano_cpus,
        });
    }
    Ok(())
}

/// Checks a task template: its container, limits, reservations and restart
/// timing.
pub fn task(t: &TaskSpec) -> Result {
    container(&t.container)?;
    amounts(
        "--reserve-cpu",
        "--reserve-memory",
        &t.resources.reservations,
    )?;
    amounts("--limit-cpu", "--limit-memory", &t.resources.limits)?;
    memory_limit(t.resources.limits.memory_bytes)?;
    cpu_limit(t.resources.limits.nano_cpus)?;
    duration_ms("--restart-delay", t.restart.delay_ms)?;
    duration_ms("--restart-window", t.restart.window_ms)
}

/// Checks a service spec's container-side values and the durations of its
/// update and rollback settings. (Names, placement expressions and modes are
/// the control API's own checks.)
pub fn service(s: &ServiceSpec) -> Result {
    task(&s.task)?;
    duration_ms("--update-delay", s.update.delay_ms)?;
    duration_ms("--update-monitor", s.update.monitor_ms)?;
    duration_ms("--rollback-delay", s.rollback.delay_ms)?;
    duration_ms("--rollback-monitor", s.rollback.monitor_ms)
}

#[cfg(test)]
mod tests;
