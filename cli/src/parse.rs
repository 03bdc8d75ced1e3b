//! Flag validation at the edge: every value a user types that the daemon would
//! otherwise reject later (sizes, CPU counts, restart policies, env files,
//! volume specs, signals, labels, names, ports) is checked and normalised here,
//! so that a mistake gets one clear line before anything is created. This
//! module does no I/O except reading an env file; the client's environment is
//! passed in as a lookup function so tests never touch the process's own.

use std::collections::BTreeMap;
use std::fmt;

/// A flag value that failed validation; the message says what was wrong and
/// what is accepted instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// Local result type of this module.
pub type Result<T> = std::result::Result<T, ParseError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(ParseError(msg.into()))
}

/// Parses a memory size the way Docker does (`RAMInBytes`): a decimal number
/// followed by an optional unit `b`, `k`, `m`, `g`, `t` or `p` (case-insensitive,
/// binary multiples, optionally written `kb`, `kib`, `MiB`…). A bare number is bytes.
pub fn memory_size(input: &str) -> Result<i64> {
    let bad = || {
        ParseError(format!(
            "invalid size {input:?}: use a number with an optional unit b, k, m, g, t or p (e.g. 512m, 1g)"
        ))
    };
    let s = input.trim();
    if s.starts_with('-') {
        return err(format!(
            "invalid size {input:?}: a size cannot be negative (use 0 for none)"
        ));
    }
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    if number.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let mut chars = unit.chars();
    let multiplier: f64 = match chars.next() {
        None => 1.0,
        Some('b') if chars.as_str().is_empty() => 1.0,
        Some(c) => {
            let m = match c {
                'k' => 1024f64,
                'm' => 1024f64.powi(2),
                'g' => 1024f64.powi(3),
                't' => 1024f64.powi(4),
                'p' => 1024f64.powi(5),
                _ => return Err(bad()),
            };
            match chars.as_str() {
                "" | "b" | "ib" | "i" => m,
                _ => return Err(bad()),
            }
        }
    };
    let bytes = value * multiplier;
    if bytes >= i64::MAX as f64 {
        return err(format!(
            "invalid size {input:?}: sizes are at most 8 EiB ({} bytes)",
            i64::MAX
        ));
    }
    Ok(bytes as i64)
}

/// Parses a duration flag (`5s`, `1m30s`, `250ms`, `2h`): not negative, and
/// at most [`agent_common::validate::MAX_DURATION_MS`] (about 292 years),
/// so it never wraps when stored in milliseconds.
pub fn duration(input: &str) -> Result<std::time::Duration> {
    let s = input.trim();
    if s.starts_with('-') {
        return err(format!(
            "invalid duration {input:?}: a duration cannot be negative (use 0 for none)"
        ));
    }
    let d = humantime::parse_duration(s).map_err(|e| {
        ParseError(format!(
            "invalid duration {input:?}: {e}; use a number with a unit, e.g. 500ms, 10s, 1m30s, 2h"
        ))
    })?;
    if d.as_millis() > u128::from(agent_common::validate::MAX_DURATION_MS) {
        return err(format!(
            "invalid duration {input:?}: durations are at most {}h (about 292 years)",
            agent_common::validate::MAX_DURATION_MS / 3_600_000
        ));
    }
    Ok(d)
}

/// Parses a count (`--replicas 3`): a whole number, 0 or more.
pub fn count(input: &str) -> Result<u64> {
    let s = input.trim();
    if let Some(n) = s.strip_prefix('-') {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return err(format!("{input} is negative: use 0 or more"));
        }
    }
    s.parse::<u64>()
        .map_err(|_| ParseError(format!("{input:?} is not a whole number: use 0, 1, 2…")))
}

/// [`count`], for counts kept in 32 bits (`--health-retries`).
pub fn small_count(input: &str) -> Result<u32> {
    let n = count(input)?;
    u32::try_from(n).map_err(|_| ParseError(format!("{input} is too large: at most {}", u32::MAX)))
}

/// Parses a fraction (`--update-max-failure-ratio 0.25`): 0 to 1.
pub fn fraction(input: &str) -> Result<f64> {
    let v: f64 = input.trim().parse().map_err(|_| {
        ParseError(format!(
            "{input:?} is not a number: use a fraction between 0 and 1, e.g. 0.25"
        ))
    })?;
    if !(0.0..=1.0).contains(&v) {
        return err(format!(
            "{input} is not between 0 and 1: it is the fraction of updated tasks allowed to fail (0.25 is a quarter)"
        ));
    }
    Ok(v)
}

/// Parses a CPU count for `--reserve-cpu`/`--limit-cpu` (`0.5`, `2`) into
/// billionths of a CPU, exactly; refuses negatives with that reason.
pub fn cpus(input: &str) -> Result<u64> {
    if input.trim().starts_with('-') {
        return err(format!(
            "{input} is negative: a number of CPUs is 0 (none) or more, e.g. 0.5 or 2"
        ));
    }
    decimal_nanos(input)
        .map(|n| n as u64)
        .map_err(|_| {
            ParseError(format!(
                "{input:?} is not a number of CPUs: use a decimal number such as 0.5 or 2 (at most 9 decimal places)"
            ))
        })
}

/// The smallest memory limit a container may have (Docker's minimum).
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// Parses `-m/--memory`: a size of at least 6 MiB, or 0 for unlimited.
pub fn memory_limit(input: &str) -> Result<i64> {
    let bytes = memory_size(input)?;
    if bytes != 0 && bytes < MIN_MEMORY {
        return err(format!(
            "invalid --memory {input:?}: the minimum memory limit is 6MB"
        ));
    }
    Ok(bytes)
}

/// Parses `--cpus 1.5` into NanoCpus (1_500_000_000), exactly, without
/// floating point: at most nine decimal places.
pub fn nano_cpus(input: &str) -> Result<i64> {
    if input.trim().starts_with('-') {
        return err(format!(
            "invalid --cpus {input:?}: a number of CPUs cannot be negative; use 0.5, 2, …"
        ));
    }
    decimal_nanos(input)
}

fn decimal_nanos(input: &str) -> Result<i64> {
    let bad = || {
        ParseError(format!(
            "invalid --cpus {input:?}: use a positive decimal number of CPUs such as 0.5 or 2"
        ))
    };
    let s = input.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 9 {
        return err(format!(
            "invalid --cpus {input:?}: too precise, at most 9 decimal places"
        ));
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    int.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(bad)
}

/// Parses `--restart`: `no`, `always`, `unless-stopped`, `on-failure` or
/// `on-failure:N`. Returns the engine's policy.
pub fn restart_policy(input: &str) -> Result<agent_common::engine::RestartPolicy> {
    let (name, count) = match input.split_once(':') {
        Some((name, count)) => (name, Some(count)),
        None => (input, None),
    };
    match name {
        "no" | "always" | "unless-stopped" | "on-failure" => {}
        _ => {
            return err(format!(
                "invalid restart policy {input:?}: use no, always, unless-stopped or on-failure[:max-retries]"
            ))
        }
    }
    let maximum_retry_count = match count {
        None => 0,
        Some(_) if name != "on-failure" => {
            return err(format!(
                "invalid restart policy {input:?}: a maximum retry count can only be used with on-failure"
            ))
        }
        Some(n) => n.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ParseError(format!(
                "invalid restart policy {input:?}: the maximum retry count must be a non-negative integer"
            ))
        })?,
    };
    Ok(agent_common::engine::RestartPolicy {
        name: name.to_string(),
        maximum_retry_count,
    })
}

/// Validates one `-e` value. `KEY=VAL` is kept; a bare `KEY` takes its value
/// from the client's environment (through `lookup`) and is dropped when unset.
pub fn env_var(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>> {
    let (key, value) = match input.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (input, None),
    };
    if key.is_empty() {
        return err(format!(
            "invalid environment variable {input:?}: the name is empty"
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return err(format!(
            "invalid environment variable {input:?}: the name {key:?} contains whitespace"
        ));
    }
    Ok(match value {
        Some(_) => Some(input.to_string()),
        None => lookup(key).map(|v| format!("{key}={v}")),
    })
}

/// Parses the text of an `--env-file`: `KEY=VAL` lines, blank lines and `#`
/// comments skipped, a bare `KEY` taking its value from the client's
/// environment. `origin` (the file's name) appears in errors with the line number.
pub fn env_file(
    text: &str,
    origin: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = if line.contains('=') {
            line
        } else {
            line.trim_end()
        };
        match env_var(line, lookup) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(e) => return err(format!("{origin}, line {}: {e}", n + 1)),
        }
    }
    Ok(out)
}

fn valid_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// What a `-v` spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A host path mounted into the container.
    Bind(String),
    /// A named volume (created when missing).
    Named(String),
    /// A new anonymous volume.
    Anonymous,
}

/// A validated `-v` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Where the data comes from.
    pub source: VolumeSource,
    /// Absolute path inside the container.
    pub destination: String,
    /// False with `:ro`.
    pub read_write: bool,
}

/// Parses `-v`: `NAME:/ctr[:ro|rw]`, `/host:/ctr[:ro|rw]` or `/ctr[:ro|rw]`.
pub fn volume_spec(input: &str) -> Result<VolumeSpec> {
    let parts: Vec<&str> = input.split(':').collect();
    let is_mode = |m: &str| m == "ro" || m == "rw";
    let (source, destination, mode) = match parts.as_slice() {
        [dst] => (None, *dst, None),
        [dst, mode] if is_mode(mode) => (None, *dst, Some(*mode)),
        [src, dst] => (Some(*src), *dst, None),
        [src, dst, mode] => (Some(*src), *dst, Some(*mode)),
        _ => {
            return err(format!(
                "invalid volume specification {input:?}: use NAME:/path, /host/path:/path or /path, optionally followed by :ro or :rw"
            ))
        }
    };
    if let Some(mode) = mode {
        if !is_mode(mode) {
            return err(format!(
                "invalid volume specification {input:?}: invalid mode {mode:?} (use ro or rw)"
            ));
        }
    }
    if destination.is_empty() {
        return err(format!(
            "invalid volume specification {input:?}: the container path is empty"
        ));
    }
    if !destination.starts_with('/') {
        return err(format!(
            "invalid volume specification {input:?}: the container path {destination:?} must be absolute"
        ));
    }
    if destination.trim_end_matches('/').is_empty() {
        return err(format!(
            "invalid volume specification {input:?}: the container path cannot be '/'"
        ));
    }
    let source = match source {
        None => VolumeSource::Anonymous,
        Some("") => {
            return err(format!(
                "invalid volume specification {input:?}: the source is empty"
            ))
        }
        Some(src) if src.starts_with('/') => VolumeSource::Bind(src.to_string()),
        Some(src) if valid_volume_name(src) => VolumeSource::Named(src.to_string()),
        Some(src) => {
            return err(format!(
                "invalid volume specification {input:?}: {src:?} is not a valid volume name \
                 (only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed); for a host directory use an absolute path"
            ))
        }
    };
    Ok(VolumeSpec {
        source,
        destination: destination.to_string(),
        read_write: mode != Some("ro"),
    })
}

/// Validates a volume name given to `volume create`.
pub fn volume_name(input: &str) -> Result<String> {
    if valid_volume_name(input) {
        Ok(input.to_string())
    } else {
        err(format!(
            "invalid volume name {input:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at least 2 characters"
        ))
    }
}

/// Parses `--network`: `none`, `host`, `bridge` (or `default`, its alias),
/// `container:NAME`, or the name of a user-defined network (the daemon
/// checks that it exists). Returns the engine's `NetworkMode`.
pub fn network_mode(input: &str) -> Result<String> {
    match input {
        "none" | "host" => Ok(input.to_string()),
        "bridge" | "default" => Ok("default".to_string()),
        _ if input.starts_with("container:") && input.len() > "container:".len() => {
            Ok(input.to_string())
        }
        _ if volume_name(input).is_ok() => Ok(input.to_string()),
        _ => err(format!(
            "invalid --network {input:?}: use bridge, none, host, container:NAME or a network name"
        )),
    }
}

/// Parses one `-l/--label` value: `KEY=VALUE` or `KEY` (empty value).
pub fn label(input: &str) -> Result<(String, String)> {
    let (key, value) = input.split_once('=').unwrap_or((input, ""));
    let key = key.trim();
    if key.is_empty() {
        return err(format!("invalid label {input:?}: the key is empty"));
    }
    if key.chars().any(char::is_whitespace) {
        return err(format!(
            "invalid label {input:?}: the key contains whitespace"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Collects labels into a map; a later duplicate key wins, as in Docker.
pub fn labels(inputs: &[String]) -> Result<BTreeMap<String, String>> {
    inputs.iter().map(|l| label(l)).collect()
}

const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGIOT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGSTKFLT", 16),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPOLL", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
];

const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// Parses a signal as `SIGTERM`, `TERM`, `term` or `15` (also `RTMIN+3`).
/// Returns the canonical name (`SIGTERM`), or the number as text for
/// real-time signals.
pub fn signal(input: &str) -> Result<String> {
    let bad = || {
        ParseError(format!(
            "invalid signal {input:?}: use a name such as SIGTERM, TERM or KILL, or a number from 1 to 64"
        ))
    };
    let s = input.trim();
    if let Ok(n) = s.parse::<i32>() {
        if !(1..=SIGRTMAX).contains(&n) {
            return Err(bad());
        }
        return Ok(SIGNALS
            .iter()
            .find(|(_, num)| *num == n)
            .map(|(name, _)| name.to_string())
            .unwrap_or_else(|| n.to_string()));
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((canonical, _)) = SIGNALS.iter().find(|(n, _)| &n[3..] == name) {
        return Ok(canonical.to_string());
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Option<String> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().ok()?
        };
        let n = base + sign * off;
        (SIGRTMIN..=SIGRTMAX).contains(&n).then(|| n.to_string())
    };
    let parsed = if let Some(rest) = name.strip_prefix("RTMIN") {
        match rest {
            "" => rt(SIGRTMIN, "", 1),
            r => r
                .strip_prefix('+')
                .filter(|r| !r.is_empty())
                .and_then(|r| rt(SIGRTMIN, r, 1)),
        }
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        match rest {
            "" => rt(SIGRTMAX, "", -1),
            r => r
                .strip_prefix('-')
                .filter(|r| !r.is_empty())
                .and_then(|r| rt(SIGRTMAX, r, -1)),
        }
    } else {
        None
    };
    parsed.ok_or_else(bad)
}

/// Validates a container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, an optional
/// leading `/` dropped.
pub fn container_name(input: &str) -> Result<String> {
    let name = input.strip_prefix('/').unwrap_or(input);
    if valid_volume_name(name) {
        Ok(name.to_string())
    } else {
        err(format!(
            "invalid container name {input:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at least 2 characters"
        ))
    }
}

/// Docker's default capability names plus the rest of Linux's, without `CAP_`.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Normalises a `--cap-add/--cap-drop` value: `net_admin`, `NET_ADMIN` and
/// `CAP_NET_ADMIN` all become `CAP_NET_ADMIN`; `ALL` stays `ALL`.
pub fn capability(input: &str) -> Result<String> {
    let upper = input.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        Ok(format!("CAP_{bare}"))
    } else {
        err(format!(
            "unknown capability {input:?}: use a Linux capability name such as NET_ADMIN, or ALL"
        ))
    }
}

/// Parses `--device HOST[:CONTAINER][:PERMS]` into Docker's `DeviceMapping`.
pub fn device(input: &str) -> Result<agent_common::engine::DeviceMapping> {
    let bad = || {
        ParseError(format!(
            "invalid --device {input:?}: use HOST[:CONTAINER][:PERMS] with absolute paths and PERMS of r, w, m (e.g. /dev/fuse:/dev/fuse:rwm)"
        ))
    };
    let perms_ok = |p: &str| !p.is_empty() && p.chars().all(|c| "rwm".contains(c));
    let parts: Vec<&str> = input.split(':').collect();
    let (host, container, perms) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, p] if perms_ok(p) => (*h, *h, *p),
        [h, c] => (*h, *c, "rwm"),
        [h, c, p] => (*h, *c, *p),
        _ => return Err(bad()),
    };
    if !host.starts_with('/')
        || !container.starts_with('/')
        || !perms_ok(perms)
        || container.split('/').any(|c| c == "..")
    {
        return Err(bad());
    }
    Ok(agent_common::engine::DeviceMapping {
        path_on_host: host.to_string(),
        path_in_container: container.to_string(),
        cgroup_permissions: perms.to_string(),
    })
}

/// Parses a `--security-opt`. `seccomp=FILE` is sent as the file's JSON
/// (read here, as Docker's client does); `read` reads a file.
pub fn security_opt(input: &str, read: &dyn Fn(&str) -> std::io::Result<String>) -> Result<String> {
    let (key, value) = match input.split_once(['=', ':']) {
        Some((k, v)) => (k, Some(v)),
        None => (input, None),
    };
    match (key, value) {
        ("seccomp", Some("unconfined" | "builtin" | "default")) => Ok(input.to_string()),
        ("seccomp", Some(file)) if !file.is_empty() => {
            let text = read(file).map_err(|e| {
                ParseError(format!("opening seccomp profile ({file}) failed: {e}"))
            })?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                ParseError(format!("the seccomp profile {file} is not valid JSON: {e}"))
            })?;
            Ok(format!("seccomp={json}"))
        }
        ("no-new-privileges", None | Some("true" | "false")) => Ok(input.to_string()),
        _ => err(format!(
            "invalid --security-opt {input:?}: use seccomp=unconfined, seccomp=FILE or no-new-privileges"
        )),
    }
}

/// Parses `--expose`/the container side of `-p`: `80`, `80/tcp`, `53/udp`,
/// or a range `8000-8010/tcp`. Returns Docker's `ExposedPorts` keys.
pub fn exposed_ports(input: &str) -> Result<Vec<String>> {
    let bad = |why: &str| {
        ParseError(format!(
            "invalid port {input:?}: {why} (use PORT[/tcp|udp|sctp] or START-END[/PROTO])"
        ))
    };
    let (ports, proto) = input.split_once('/').unwrap_or((input, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("unknown protocol"));
    }
    let port = |p: &str| -> Result<u16> {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("ports are 1-65535"))
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err(bad("the range ends before it starts"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Validates a `-p/--publish` value: `[IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]`.
/// Returns the container-side `ExposedPorts` keys.
pub fn publish(input: &str) -> Result<Vec<String>> {
    let (addr, proto) = match input.rsplit_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (input, None),
    };
    let parts: Vec<&str> = addr.rsplitn(3, ':').collect();
    let container = parts[0];
    if let Some(host_port) = parts.get(1) {
        if !host_port.is_empty() {
            exposed_ports(host_port)
                .map_err(|e| ParseError(format!("invalid --publish {input:?}: host port: {e}")))?;
        }
    }
    let spec = match proto {
        Some(p) => format!("{container}/{p}"),
        None => container.to_string(),
    };
    exposed_ports(&spec).map_err(|e| ParseError(format!("invalid --publish {input:?}: {e}")))
}

/// Parses a `-p/--publish` value into `(container port key, host ip, host port)`
/// entries: `8080:80` → `("80/tcp", "", "8080")`; a container port range
/// needs an equally long host range or none.
pub fn publish_bindings(input: &str) -> Result<Vec<(String, String, String)>> {
    let containers = publish(input)?;
    let addr = input.rsplit_once('/').map_or(input, |(a, _)| a);
    let parts: Vec<&str> = addr.rsplitn(3, ':').collect();
    let host_port = parts.get(1).copied().unwrap_or("");
    let host_ip = parts.get(2).copied().unwrap_or("");
    if !host_ip.is_empty() && host_ip.parse::<std::net::Ipv4Addr>().is_err() {
        return err(format!(
            "invalid --publish {input:?}: {host_ip:?} is not an IPv4 address"
        ));
    }
    let hosts: Vec<String> = if host_port.is_empty() {
        vec![String::new(); containers.len()]
    } else {
        exposed_ports(host_port)?
            .into_iter()
            .map(|p| p.split('/').next().unwrap_or_default().to_string())
            .collect()
    };
    if hosts.len() != containers.len() {
        return err(format!(
            "invalid --publish {input:?}: the host and container port ranges differ in length"
        ));
    }
    Ok(containers
        .into_iter()
        .zip(hosts)
        .map(|(c, h)| (c, host_ip.to_string(), h))
        .collect())
}

/// Parses `--detach-keys`: comma-separated keys, each `ctrl-X` (X a letter,
/// `@`, `[`, `\\`, `]`, `^` or `_`) or a single character.
pub fn detach_keys(input: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for key in input.split(',') {
        let lower = key.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("ctrl-") {
            let mut chars = rest.chars();
            let code = match (chars.next(), chars.next()) {
                (Some(c @ 'a'..='z'), None) => c as u8 - b'a' + 1,
                (Some('@'), None) => 0,
                (Some(c @ ('[' | '\\' | ']' | '^' | '_')), None) => c as u8 - b'@',
                _ => {
                    return err(format!(
                        "invalid detach keys {input:?}: unknown key {key:?}"
                    ))
                }
            };
            out.push(code);
        } else if key.len() == 1 {
            out.push(key.as_bytes()[0]);
        } else {
            return err(format!(
                "invalid detach keys {input:?}: use keys such as ctrl-p,ctrl-q or single characters"
            ));
        }
    }
    Ok(out)
}

/// Parses `logs --tail`: a number of lines, or `all` (returned as -1).
pub fn tail(input: &str) -> Result<i64> {
    if input == "all" {
        return Ok(-1);
    }
    input
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ParseError(format!(
                "invalid --tail {input:?}: use a number of lines or all"
            ))
        })
}

/// The registry host of an image reference (`127.0.0.1:5000/app` →
/// `127.0.0.1:5000`), by Docker's rule: the first path component is a host
/// only if it contains `.` or `:` or is `localhost`. None for short names.
pub fn registry_of(reference: &str) -> Option<String> {
    let (first, _) = reference.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then(|| first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn memory_sizes_use_binary_units_case_insensitively() {
        assert_eq!(memory_size("1024").unwrap(), 1024);
        assert_eq!(memory_size("100b").unwrap(), 100);
        assert_eq!(memory_size("100k").unwrap(), 100 * 1024);
        assert_eq!(memory_size("100K").unwrap(), 100 * 1024);
        assert_eq!(memory_size("512m").unwrap(), 512 << 20);
        assert_eq!(memory_size("512MB").unwrap(), 512 << 20);
        assert_eq!(memory_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(memory_size("1g").unwrap(), 1 << 30);
        assert_eq!(memory_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(memory_size("2t").unwrap(), 2 << 40);
    }

    #[test]
    fn memory_sizes_reject_garbage() {
        for bad in ["", "m", "1x", "1mm", "-1m", "1.2.3m", ".5g", "1gbb", "ten"] {
            let e = memory_size(bad).unwrap_err();
            assert!(e.0.contains("invalid size"), "{bad}: {e}");
        }
    }

    #[test]
    fn memory_size_errors_name_every_unit_and_the_real_reason() {
        let e = memory_size("12x").unwrap_err();
        assert!(e.0.contains("b, k, m, g, t or p"), "{e}");
        assert!(memory_size("-1m").unwrap_err().0.contains("negative"));
        assert!(memory_size("9999999p").unwrap_err().0.contains("at most"));
        assert_eq!(memory_size("1000t").unwrap(), 1000 << 40);
    }

    #[test]
    fn durations_are_non_negative_and_range_checked() {
        assert_eq!(duration("5s").unwrap(), std::time::Duration::from_secs(5));
        assert_eq!(
            duration("1m30s").unwrap(),
            std::time::Duration::from_secs(90)
        );
        assert!(duration("-5s").unwrap_err().0.contains("negative"));
        assert!(duration("99999999999999h")
            .unwrap_err()
            .0
            .contains("at most"));
        assert!(duration("5 parsecs").unwrap_err().0.contains("500ms"));
        let max = agent_common::validate::MAX_DURATION_MS;
        assert!(duration(&format!("{max}ms")).is_ok());
        assert!(duration(&format!("{}ms", max + 1)).is_err());
    }

    #[test]
    fn counts_cpus_and_fractions_say_why_they_are_refused() {
        assert_eq!(count("3").unwrap(), 3);
        assert!(count("-1").unwrap_err().0.contains("negative"));
        assert!(count("x").unwrap_err().0.contains("whole number"));
        assert!(small_count("5000000000")
            .unwrap_err()
            .0
            .contains("too large"));
        assert_eq!(cpus("0.5").unwrap(), 500_000_000);
        assert_eq!(cpus("2").unwrap(), 2_000_000_000);
        assert!(cpus("-1").unwrap_err().0.contains("negative"));
        assert!(cpus("lots").unwrap_err().0.contains("number of CPUs"));
        assert_eq!(fraction("0.25").unwrap(), 0.25);
        assert!(fraction("-0.5").unwrap_err().0.contains("between 0 and 1"));
        assert!(fraction("NaN").is_err());
        assert!(nano_cpus("-1").unwrap_err().0.contains("negative"));
    }

    #[test]
    fn memory_limit_enforces_minimum_but_allows_unlimited() {
        assert_eq!(memory_limit("0").unwrap(), 0);
        assert_eq!(memory_limit("6m").unwrap(), MIN_MEMORY);
        assert!(memory_limit("4m").unwrap_err().0.contains("minimum"));
    }

    #[test]
    fn cpus_become_exact_nano_cpus() {
        assert_eq!(nano_cpus("1.5").unwrap(), 1_500_000_000);
        assert_eq!(nano_cpus("2").unwrap(), 2_000_000_000);
        assert_eq!(nano_cpus("0.1").unwrap(), 100_000_000);
        assert_eq!(nano_cpus(".25").unwrap(), 250_000_000);
        assert_eq!(nano_cpus("0.000000001").unwrap(), 1);
        assert!(nano_cpus("0.0000000001")
            .unwrap_err()
            .0
            .contains("too precise"));
        for bad in ["", ".", "-1", "1,5", "abc", "1e3"] {
            assert!(nano_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restart_policies() {
        let p = restart_policy("on-failure:3").unwrap();
        assert_eq!((p.name.as_str(), p.maximum_retry_count), ("on-failure", 3));
        let p = restart_policy("on-failure").unwrap();
        assert_eq!((p.name.as_str(), p.maximum_retry_count), ("on-failure", 0));
        for ok in ["no", "always", "unless-stopped"] {
            assert_eq!(restart_policy(ok).unwrap().name, ok);
        }
        assert!(restart_policy("always:3")
            .unwrap_err()
            .0
            .contains("only be used with on-failure"));
        assert!(restart_policy("on-failure:-1").is_err());
        assert!(restart_policy("on-failure:x").is_err());
        assert!(restart_policy("sometimes").is_err());
    }

    #[test]
    fn env_vars_take_bare_keys_from_the_client() {
        let lookup = |k: &str| (k == "HOME").then(|| "/root".to_string());
        assert_eq!(env_var("A=1", &lookup).unwrap(), Some("A=1".into()));
        assert_eq!(env_var("A=", &lookup).unwrap(), Some("A=".into()));
        assert_eq!(env_var("HOME", &lookup).unwrap(), Some("HOME=/root".into()));
        assert_eq!(env_var("UNSET", &lookup).unwrap(), None);
        assert!(env_var("=x", &lookup).is_err());
        assert!(env_var("A B=1", &lookup).is_err());
    }

    #[test]
    fn env_files_skip_comments_and_blank_lines() {
        let lookup = |k: &str| (k == "USER").then(|| "alice".to_string());
        let text = "# comment\n\nA=1\n  B=two words \nUSER\nMISSING\nC=x=y\n";
        assert_eq!(
            env_file(text, "f.env", &lookup).unwrap(),
            vec!["A=1", "B=two words ", "USER=alice", "C=x=y"]
        );
        let e = env_file("A=1\nBAD KEY=2\n", "f.env", &no_env).unwrap_err();
        assert!(e.0.starts_with("f.env, line 2:"), "{e}");
    }

    #[test]
    fn volume_specs() {
        let v = volume_spec("data:/var/lib/data").unwrap();
        assert_eq!(v.source, VolumeSource::Named("data".into()));
        assert_eq!(v.destination, "/var/lib/data");
        assert!(v.read_write);
        let v = volume_spec("/srv:/srv:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Bind("/srv".into()));
        assert!(!v.read_write);
        let v = volume_spec("/cache").unwrap();
        assert_eq!(v.source, VolumeSource::Anonymous);
        let v = volume_spec("/cache:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Anonymous);
        assert!(!v.read_write);
        assert!(volume_spec("data:/x:rw").unwrap().read_write);
    }

    #[test]
    fn volume_specs_reject_bad_input() {
        assert!(volume_spec("data:relative")
            .unwrap_err()
            .0
            .contains("absolute"));
        assert!(volume_spec("relative").unwrap_err().0.contains("absolute"));
        assert!(volume_spec("data:/x:rx")
            .unwrap_err()
            .0
            .contains("invalid mode"));
        assert!(volume_spec("./dir:/x")
            .unwrap_err()
            .0
            .contains("absolute path"));
        assert!(volume_spec("a:b:c:d").is_err());
        assert!(volume_spec("data:/").unwrap_err().0.contains("'/'"));
        assert!(volume_spec(":/x").is_err());
    }

    #[test]
    fn networks() {
        assert_eq!(network_mode("none").unwrap(), "none");
        assert_eq!(network_mode("host").unwrap(), "host");
        assert_eq!(network_mode("bridge").unwrap(), "default");
        assert_eq!(network_mode("container:web").unwrap(), "container:web");
        assert!(network_mode("container:").is_err());
        assert_eq!(network_mode("mynet").unwrap(), "mynet");
        assert!(network_mode("my net")
            .unwrap_err()
            .0
            .contains("bridge, none, host, container:NAME or a network name"));
    }

    #[test]
    fn labels_parse_keys_and_values() {
        assert_eq!(label("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(label("flag").unwrap(), ("flag".into(), "".into()));
        assert!(label("=x").is_err());
        assert!(label("a b=c").is_err());
        let m = labels(&["x=1".into(), "x=2".into()]).unwrap();
        assert_eq!(m["x"], "2");
    }

    #[test]
    fn signals_accept_names_short_names_and_numbers() {
        assert_eq!(signal("SIGTERM").unwrap(), "SIGTERM");
        assert_eq!(signal("TERM").unwrap(), "SIGTERM");
        assert_eq!(signal("term").unwrap(), "SIGTERM");
        assert_eq!(signal("9").unwrap(), "SIGKILL");
        assert_eq!(signal("kill").unwrap(), "SIGKILL");
        assert_eq!(signal("RTMIN+2").unwrap(), "36");
        assert_eq!(signal("SIGRTMAX").unwrap(), "64");
        assert_eq!(signal("40").unwrap(), "40");
        for bad in ["0", "65", "SIGFOO", "", "RTMIN+40", "-9"] {
            assert!(signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_names() {
        assert_eq!(container_name("web").unwrap(), "web");
        assert_eq!(container_name("/web-1.a_b").unwrap(), "web-1.a_b");
        assert!(container_name("w").is_err());
        assert!(container_name("-web").is_err());
        assert!(container_name("we b").is_err());
    }

    #[test]
    fn capabilities_normalise() {
        assert_eq!(capability("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(capability("CAP_SYS_ADMIN").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(capability("all").unwrap(), "ALL");
        assert!(capability("FLY").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(exposed_ports("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(exposed_ports("53/udp").unwrap(), vec!["53/udp"]);
        assert_eq!(exposed_ports("8000-8002").unwrap().len(), 3);
        assert!(exposed_ports("0").is_err());
        assert!(exposed_ports("80/xyz").is_err());
        assert!(exposed_ports("90-80").is_err());
        assert_eq!(publish("8080:80").unwrap(), vec!["80/tcp"]);
        assert_eq!(publish("127.0.0.1:8080:80/udp").unwrap(), vec!["80/udp"]);
        assert_eq!(publish("127.0.0.1::80").unwrap(), vec!["80/tcp"]);
        assert!(publish("x:80").is_err());
        assert!(publish("8080:").is_err());
        assert_eq!(
            publish_bindings("127.0.0.1:8080:80").unwrap(),
            vec![(
                "80/tcp".to_string(),
                "127.0.0.1".to_string(),
                "8080".to_string()
            )]
        );
        assert_eq!(
            publish_bindings("53/udp").unwrap(),
            vec![("53/udp".to_string(), String::new(), String::new())]
        );
        assert!(publish_bindings("8080-8081:80").is_err());
        assert!(publish_bindings("nothost:8080:80").is_err());
    }

    #[test]
    fn detach_key_sequences() {
        assert_eq!(detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(detach_keys("ctrl-@,a").unwrap(), vec![0, b'a']);
        assert!(detach_keys("ctrl-1").is_err());
        assert!(detach_keys("abc").is_err());
    }

    #[test]
    fn tails() {
        assert_eq!(tail("all").unwrap(), -1);
        assert_eq!(tail("10").unwrap(), 10);
        assert!(tail("-3").is_err());
        assert!(tail("x").is_err());
    }

    #[test]
    fn registries_of_references() {
        assert_eq!(
            registry_of("127.0.0.1:5000/app:1"),
            Some("127.0.0.1:5000".into())
        );
        assert_eq!(registry_of("localhost/app"), Some("localhost".into()));
        assert_eq!(
            registry_of("reg.example/team/app"),
            Some("reg.example".into())
        );
        assert_eq!(registry_of("team/app"), None);
        assert_eq!(registry_of("busybox"), None);
    }

    #[test]
    fn device_flags() {
        let d = device("/dev/null").unwrap();
        assert_eq!(
            (d.path_in_container.as_str(), d.cgroup_permissions.as_str()),
            ("/dev/null", "rwm")
        );
        assert_eq!(
            device("/dev/null:/dev/n").unwrap().path_in_container,
            "/dev/n"
        );
        assert_eq!(device("/dev/null:rw").unwrap().cgroup_permissions, "rw");
        assert_eq!(
            device("/dev/null:/dev/n:r").unwrap().cgroup_permissions,
            "r"
        );
        for bad in [
            "null",
            "/dev/null:/dev/n:rx",
            "/dev/null:../x",
            "/a:/b:r:w",
            "/dev/null:/dev/../x",
        ] {
            assert!(device(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn security_opts() {
        let no_file =
            |_: &str| -> std::io::Result<String> { Err(std::io::ErrorKind::NotFound.into()) };
        assert_eq!(
            security_opt("seccomp=unconfined", &no_file).unwrap(),
            "seccomp=unconfined"
        );
        assert_eq!(
            security_opt("no-new-privileges", &no_file).unwrap(),
            "no-new-privileges"
        );
        let err = security_opt("seccomp=/x.json", &no_file).unwrap_err();
        assert!(err.0.contains("opening seccomp profile"), "{}", err.0);
        let file = |_: &str| Ok(r#"{ "defaultAction": "SCMP_ACT_ALLOW" }"#.to_string());
        assert_eq!(
            security_opt("seccomp=/p.json", &file).unwrap(),
            r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#
        );
        let not_json = |_: &str| Ok("nope".to_string());
        assert!(security_opt("seccomp=/p.json", &not_json).is_err());
        assert!(security_opt("apparmor=x", &no_file).is_err());
    }
}
