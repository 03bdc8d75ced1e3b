//! Dockerfile-style instructions as `docker import --change` and
//! `docker commit --change` take them: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
//! STOPSIGNAL, USER, VOLUME, WORKDIR, applied to an image's
//! [`RuntimeConfig`]. Exec form (`CMD ["ls","-l"]`) is stored as given; shell
//! form (`CMD ls -l`) becomes `["/bin/sh","-c","ls -l"]` (or the image's
//! `Shell`), as Docker stores it. This module does not build images.

use super::config::RuntimeConfig;
use super::{ImageError, Result};
use serde_json::Value;

const SUPPORTED: &str = "CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR";

/// Applies each instruction in order. Stops at the first bad one with an
/// [`ImageError::BadChange`] that names it.
pub fn apply_changes(config: &mut RuntimeConfig, changes: &[String]) -> Result<()> {
    for change in changes {
        apply_one(config, change).map_err(|reason| ImageError::BadChange {
            change: change.clone(),
            reason,
        })?;
    }
    Ok(())
}

fn apply_one(config: &mut RuntimeConfig, change: &str) -> std::result::Result<(), String> {
    let change = change.trim();
    let (keyword, rest) = change
        .split_once(|c: char| c.is_whitespace())
        .map_or((change, ""), |(k, r)| (k, r.trim()));
    let keyword = keyword.to_ascii_uppercase();
    if keyword.is_empty() {
        return Err(format!("empty instruction; use one of {SUPPORTED}"));
    }
    if rest.is_empty() {
        return Err(format!("{keyword} needs an argument"));
    }
    match keyword.as_str() {
        "CMD" => config.cmd = Some(exec_or_shell(config, rest)),
        "ENTRYPOINT" => config.entrypoint = Some(exec_or_shell(config, rest)),
        "ENV" => {
            for (k, v) in key_values(rest, true)? {
                let env = config.env.get_or_insert_with(Vec::new);
                let prefix = format!("{k}=");
                env.retain(|e| !e.starts_with(&prefix) && e != &k);
                env.push(format!("{k}={v}"));
            }
        }
        "LABEL" => {
            for (k, v) in key_values(rest, false)? {
                config
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(k, v);
            }
        }
        "WORKDIR" => {
            let dir = unquote_single(rest);
            config.working_dir = if dir.starts_with('/') {
                dir
            } else {
                let base = if config.working_dir.is_empty() {
                    "/"
                } else {
                    config.working_dir.as_str()
                };
                format!("{}/{dir}", base.trim_end_matches('/'))
            };
        }
        "USER" => config.user = unquote_single(rest),
        "STOPSIGNAL" => config.stop_signal = unquote_single(rest),
        "EXPOSE" => {
            for word in words(rest)? {
                let (port, proto) = word.split_once('/').unwrap_or((&word, "tcp"));
                let proto = proto.to_ascii_lowercase();
                let valid_port = |p: &str| p.parse::<u16>().is_ok_and(|n| n > 0);
                let ok = match port.split_once('-') {
                    Some((a, b)) => valid_port(a) && valid_port(b),
                    None => valid_port(port),
                };
                if !ok || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                    return Err(format!(
                        "invalid port {word:?}: use PORT[/tcp|udp|sctp] with 1 <= PORT <= 65535"
                    ));
                }
                config
                    .exposed_ports
                    .get_or_insert_with(Default::default)
                    .insert(format!("{port}/{proto}"), Value::Object(Default::default()));
            }
        }
        "VOLUME" => {
            let vols = match json_array(rest) {
                Some(v) => v,
                None => words(rest)?,
            };
            for v in vols {
                if v.is_empty() {
                    return Err("VOLUME needs non-empty paths".into());
                }
                config
                    .volumes
                    .get_or_insert_with(Default::default)
                    .insert(v, Value::Object(Default::default()));
            }
        }
        other => {
            return Err(format!(
                "unknown or unsupported instruction {other:?}; use one of {SUPPORTED}"
            ))
        }
    }
    Ok(())
}

/// JSON array of strings, or `None` when `s` is not one.
fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

/// Exec form if `s` is a JSON array of strings, else shell form.
fn exec_or_shell(config: &RuntimeConfig, s: &str) -> Vec<String> {
    json_array(s).unwrap_or_else(|| {
        let mut v = config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
        v.push(s.to_string());
        v
    })
}

fn unquote_single(s: &str) -> String {
    match words(s) {
        Ok(w) if w.len() == 1 => w.into_iter().next().unwrap_or_default(),
        _ => s.to_string(),
    }
}

/// Splits on unquoted whitespace; handles "…", '…' and backslash escapes.
fn words(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (Some(_), c) => cur.push(c),
            (None, '"') | (None, '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `k=v k2="v 2"` pairs; with `legacy`, also `KEY value with spaces`.
fn key_values(s: &str, legacy: bool) -> std::result::Result<Vec<(String, String)>, String> {
    let ws = words(s)?;
    let first_has_eq = ws.first().is_some_and(|w| w.contains('='));
    if !first_has_eq {
        if legacy {
            let (k, v) = s
                .split_once(|c: char| c.is_whitespace())
                .ok_or_else(|| "ENV needs KEY=VALUE or KEY VALUE".to_string())?;
            return Ok(vec![(k.to_string(), v.trim().to_string())]);
        }
        return Err("needs KEY=VALUE pairs".into());
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("{w:?} is not KEY=VALUE")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(changes: &[&str]) -> Result<RuntimeConfig> {
        let mut c = RuntimeConfig::default();
        apply_changes(
            &mut c,
            &changes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?;
        Ok(c)
    }

    #[test]
    fn exec_and_shell_forms() {
        let c = apply(&[r#"CMD ["ls","-l"]"#, "ENTRYPOINT /bin/echo hi there"]).unwrap();
        assert_eq!(c.cmd.unwrap(), vec!["ls", "-l"]);
        assert_eq!(
            c.entrypoint.unwrap(),
            vec!["/bin/sh", "-c", "/bin/echo hi there"]
        );
    }

    #[test]
    fn env_label_expose_volume_workdir_user_stopsignal() {
        let c = apply(&[
            r#"ENV A=1 B="two words""#,
            "ENV LEGACY some value",
            "env A=3",
            r#"LABEL org.x="y z" k=v"#,
            "EXPOSE 80 53/udp 8000-8010",
            r#"VOLUME ["/data", "/logs"]"#,
            "VOLUME /cache",
            "WORKDIR /srv",
            "WORKDIR app",
            "USER nobody:nogroup",
            "STOPSIGNAL SIGQUIT",
        ])
        .unwrap();
        assert_eq!(
            c.env.unwrap(),
            vec!["B=two words", "LEGACY=some value", "A=3"]
        );
        let labels = c.labels.unwrap();
        assert_eq!(labels["org.x"], "y z");
        assert_eq!(labels["k"], "v");
        let ports: Vec<_> = c.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(ports, vec!["53/udp", "80/tcp", "8000-8010/tcp"]);
        let vols: Vec<_> = c.volumes.unwrap().into_keys().collect();
        assert_eq!(vols, vec!["/cache", "/data", "/logs"]);
        assert_eq!(c.working_dir, "/srv/app");
        assert_eq!(c.user, "nobody:nogroup");
        assert_eq!(c.stop_signal, "SIGQUIT");
    }

    #[test]
    fn bad_instructions_are_explained() {
        let e = apply(&["RUN echo hi"]).unwrap_err().to_string();
        assert!(
            e.contains("RUN") && e.contains("unknown") && e.contains("CMD, ENTRYPOINT"),
            "{e}"
        );
        let e = apply(&["EXPOSE 99999"]).unwrap_err().to_string();
        assert!(e.contains("invalid port"), "{e}");
        let e = apply(&["CMD"]).unwrap_err().to_string();
        assert!(e.contains("needs an argument"), "{e}");
        let e = apply(&["LABEL novalue"]).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        assert!(apply(&[r#"ENV A="unterminated"#]).is_err());
    }
}
