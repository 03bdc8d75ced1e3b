//! Legacy container links (`--link NAME:ALIAS`) on the default bridge, as the
//! seed notes describe and Docker's `daemon/links` builds them: environment
//! variables naming the linked container's address, ports and environment, and
//! an `/etc/hosts` entry for the alias.

use std::net::Ipv4Addr;

/// What the parent needs to know of a linked (child) container.
pub struct LinkedContainer<'a> {
    /// The child's name (without `/`).
    pub name: &'a str,
    pub hostname: &'a str,
    pub ip: Ipv4Addr,
    /// `"80/tcp"` keys of the child's exposed ports.
    pub exposed_ports: Vec<String>,
    /// The child's `KEY=VALUE` environment.
    pub env: &'a [String],
}

/// `ALIAS` as a variable prefix: upper case, `-` → `_`.
fn prefix(alias: &str) -> String {
    alias
        .rsplit('/')
        .next()
        .unwrap_or(alias)
        .to_ascii_uppercase()
        .replace(['-', '.'], "_")
}

/// The variables a parent named `parent` gets for `child` linked as `alias`.
pub fn link_env(parent: &str, alias: &str, child: &LinkedContainer<'_>) -> Vec<String> {
    let p = prefix(alias);
    let mut ports: Vec<(u16, String)> = child
        .exposed_ports
        .iter()
        .filter_map(|k| {
            let (port, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
            Some((port.parse().ok()?, proto.to_string()))
        })
        .collect();
    // TCP first, then by port number (Docker sorts this way for ALIAS_PORT).
    ports.sort_by_key(|p| (p.1 != "tcp", p.0));
    let mut env = Vec::new();
    if let Some((port, proto)) = ports.first() {
        env.push(format!("{p}_PORT={proto}://{}:{port}", child.ip));
    }
    for (port, proto) in &ports {
        let up = proto.to_ascii_uppercase();
        env.push(format!(
            "{p}_PORT_{port}_{up}={proto}://{}:{port}",
            child.ip
        ));
        env.push(format!("{p}_PORT_{port}_{up}_ADDR={}", child.ip));
        env.push(format!("{p}_PORT_{port}_{up}_PORT={port}"));
        env.push(format!("{p}_PORT_{port}_{up}_PROTO={proto}"));
    }
    env.push(format!(
        "{p}_NAME=/{parent}/{}",
        alias.rsplit('/').next().unwrap_or(alias)
    ));
    for e in child.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        if k == "HOME" || k == "PATH" || k.is_empty() {
            continue;
        }
        env.push(format!("{p}_ENV_{k}={v}"));
    }
    env
}

/// The parent's `/etc/hosts` line for the child: address, alias, the child's
/// hostname, and its name when it differs from the alias.
pub fn hosts_line(alias: &str, child: &LinkedContainer<'_>) -> String {
    let mut names = vec![alias.to_string(), child.hostname.to_string()];
    if child.name != alias {
        names.push(child.name.to_string());
    }
    names.dedup();
    format!("{}\t{}\n", child.ip, names.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_match_dockers() {
        let env = vec![
            "PATH=/bin".to_string(),
            "DB_USER=admin".to_string(),
            "HOME=/root".to_string(),
        ];
        let child = LinkedContainer {
            name: "db-server",
            hostname: "abc123",
            ip: "10.87.0.5".parse().unwrap(),
            exposed_ports: vec!["5432/tcp".into(), "53/udp".into(), "80/tcp".into()],
            env: &env,
        };
        let vars = link_env("web", "db-server", &child);
        assert_eq!(vars[0], "DB_SERVER_PORT=tcp://10.87.0.5:80");
        assert!(vars.contains(&"DB_SERVER_PORT_5432_TCP=tcp://10.87.0.5:5432".to_string()));
        assert!(vars.contains(&"DB_SERVER_PORT_5432_TCP_ADDR=10.87.0.5".to_string()));
        assert!(vars.contains(&"DB_SERVER_PORT_5432_TCP_PORT=5432".to_string()));
        assert!(vars.contains(&"DB_SERVER_PORT_5432_TCP_PROTO=tcp".to_string()));
        assert!(vars.contains(&"DB_SERVER_PORT_53_UDP=udp://10.87.0.5:53".to_string()));
        assert!(vars.contains(&"DB_SERVER_NAME=/web/db-server".to_string()));
        assert!(vars.contains(&"DB_SERVER_ENV_DB_USER=admin".to_string()));
        assert!(!vars
            .iter()
            .any(|v| v.contains("ENV_PATH") || v.contains("ENV_HOME")));
        assert_eq!(hosts_line("db", &child), "10.87.0.5\tdb abc123 db-server\n");
        assert_eq!(
            hosts_line("db-server", &child),
            "10.87.0.5\tdb-server abc123\n"
        );
    }
}
