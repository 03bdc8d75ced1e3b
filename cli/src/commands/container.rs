//! Container verbs: run/create (flags → `CreateContainer`, pull on a missing
//! image, attach or start), start/stop/kill/restart/rm/pause/unpause/wait/
//! rename, ps, logs, exec, attach, diff, export, commit, top and prune.
//! Flag parsing is in `parse`, output formats in `format`, the interactive
//! stream in `session`.

use super::{each, Ctx};
use crate::client::{rpc_code, Engine, RpcResult};
use crate::format::{self, OutputFormat};
use crate::parse;
use crate::session::{self, Input, Outcome};
use crate::{
    AttachArgs, CommitArgs, ContainerVerb, ExecArgs, ExportArgs, KillArgs, LogsArgs, PruneArgs,
    PsArgs, RmArgs, RunArgs, StartArgs, StopArgs,
};
use agent_common::engine::{
    Change, ContainerConfig, ContainerInspect, ContainerSummary, CreateContainer, EmptyObject,
    HostConfig, PruneReport, TopReply,
};
use agent_common::proto::{
    attach_input, exec_input, AttachInput, AttachStart, CommitRequest, ContainerRef, ExecInput,
    ExecStart, KillRequest, ListContainersRequest, LogsRequest, RemoveContainerRequest,
    RenameRequest, StopRequest,
};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};

const DEFAULT_DETACH_KEYS: [u8; 2] = [0x10, 0x11];

fn detach_keys(flag: Option<&str>) -> Result<Vec<u8>> {
    Ok(match flag {
        Some(k) => parse::detach_keys(k)?,
        None => DEFAULT_DETACH_KEYS.to_vec(),
    })
}

fn client_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Collects `-e` and `--env-file` values: files first, then flags, as Docker.
fn collect_env(
    env: &[String],
    env_files: &[std::path::PathBuf],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for file in env_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("failed to read env file {}", file.display()))?;
        out.extend(parse::env_file(&text, &file.display().to_string(), lookup)?);
    }
    for e in env {
        out.extend(parse::env_var(e, lookup)?);
    }
    Ok(out)
}

/// Builds the create request from `run`/`create` flags, validating every
/// value. `lookup` reads the client's environment (for bare `-e KEY`).
pub fn build_create(
    a: &RunArgs,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<CreateContainer> {
    if a.image.is_empty() {
        bail!("the image name is empty");
    }
    if let Some(r) = &a.restart {
        let policy = parse::restart_policy(r)?;
        if a.rm && policy.name != "no" {
            bail!("conflicting options: --restart and --rm (a container removed on exit cannot be restarted)");
        }
    }
    if (!a.publish.is_empty() || a.publish_all)
        && a.network
            .as_deref()
            .is_some_and(|n| n == "host" || n == "none")
    {
        bail!("conflicting options: -p/--publish cannot be used with --network host or none");
    }
    let name = a.name.as_deref().map(parse::container_name).transpose()?;
    let mut exposed = std::collections::BTreeMap::new();
    for e in &a.expose {
        for p in parse::exposed_ports(e)? {
            exposed.insert(p, EmptyObject {});
        }
    }
    for p in &a.publish {
        for p in parse::publish(p)? {
            exposed.insert(p, EmptyObject {});
        }
    }
    let mut port_bindings: std::collections::BTreeMap<
        String,
        Vec<agent_common::engine::PortBinding>,
    > = std::collections::BTreeMap::new();
    for p in &a.publish {
        for (port, host_ip, host_port) in parse::publish_bindings(p)? {
            port_bindings
                .entry(port)
                .or_default()
                .push(agent_common::engine::PortBinding { host_ip, host_port });
        }
    }
    let binds = a
        .volumes
        .iter()
        .map(|v| parse::volume_spec(v).map(|_| v.clone()))
        .collect::<parse::Result<Vec<_>>>()?;
    let host_config = HostConfig {
        port_bindings,
        publish_all_ports: a.publish_all,
        binds,
        volumes_from: a.volumes_from.clone(),
        links: a
            .links
            .iter()
            .map(|l| {
                let (name, alias) = l.split_once(':').unwrap_or((l.as_str(), l.as_str()));
                let (name, alias) = (name.trim_start_matches('/'), alias.trim_start_matches('/'));
                if name.is_empty() || alias.is_empty() {
                    anyhow::bail!("invalid --link {l:?}: use NAME or NAME:ALIAS");
                }
                Ok(format!("{name}:{alias}"))
            })
            .collect::<Result<Vec<_>>>()?,
        extra_hosts: a
            .add_host
            .iter()
            .map(|h| match h.split_once(':') {
                Some((host, ip)) if !host.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() => {
                    Ok(h.clone())
                }
                _ => anyhow::bail!("invalid --add-host {h:?}: use HOST:IP"),
            })
            .collect::<Result<Vec<_>>>()?,
        dns: a
            .dns
            .iter()
            .map(|d| match d.parse::<std::net::IpAddr>() {
                Ok(_) => Ok(d.clone()),
                Err(_) => anyhow::bail!("invalid --dns {d:?}: use an IP address"),
            })
            .collect::<Result<Vec<_>>>()?,
        network_mode: match &a.network {
            Some(n) => parse::network_mode(n)?,
            None => "default".to_string(),
        },
        restart_policy: match &a.restart {
            Some(r) => parse::restart_policy(r)?,
            None => Default::default(),
        },
        auto_remove: a.rm,
        cap_add: a
            .cap_add
            .iter()
            .map(|c| parse::capability(c))
            .collect::<parse::Result<_>>()?,
        cap_drop: a
            .cap_drop
            .iter()
            .map(|c| parse::capability(c))
            .collect::<parse::Result<_>>()?,
        readonly_rootfs: a.read_only,
        init: a.init,
        memory: a
            .memory
            .as_deref()
            .map(parse::memory_limit)
            .transpose()?
            .unwrap_or(0),
        nano_cpus: a
            .cpus
            .as_deref()
            .map(parse::nano_cpus)
            .transpose()?
            .unwrap_or(0),
        cpu_shares: match a.cpu_shares {
            Some(n) if n < 0 => bail!("invalid --cpu-shares {n}: must be 0 or more"),
            Some(n) => n,
            None => 0,
        },
        pids_limit: a.pids_limit.filter(|n| *n > 0).unwrap_or(0),
        devices: a
            .devices
            .iter()
            .map(|d| parse::device(d))
            .collect::<parse::Result<_>>()?,
        security_opt: a
            .security_opt
            .iter()
            .map(|o| parse::security_opt(o, &|f| std::fs::read_to_string(f)))
            .collect::<parse::Result<_>>()?,
    };
    let attach = !a.detach;
    let config = ContainerConfig {
        hostname: a.hostname.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        attach_stdin: attach && a.interactive,
        attach_stdout: attach,
        attach_stderr: attach,
        exposed_ports: exposed,
        tty: a.tty,
        open_stdin: a.interactive,
        stdin_once: a.interactive && attach,
        env: collect_env(&a.env, &a.env_file, lookup)?,
        cmd: (!a.command.is_empty()).then(|| a.command.clone()),
        image: a.image.clone(),
        working_dir: a.workdir.clone().unwrap_or_default(),
        entrypoint: a.entrypoint.as_ref().map(|e| vec![e.clone()]),
        labels: parse::labels(&a.labels)?,
        stop_signal: a.stop_signal.as_deref().map(parse::signal).transpose()?,
        stop_timeout: a.stop_timeout,
        ..ContainerConfig::default()
    };
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') {
            bail!("invalid --workdir {w:?}: the working directory must be an absolute path");
        }
    }
    let mut endpoints_config = std::collections::BTreeMap::new();
    if !a.network_alias.is_empty() || a.ip.is_some() {
        endpoints_config.insert(
            host_config.network_mode.clone(),
            agent_common::engine::EndpointConfig {
                aliases: a.network_alias.clone(),
                ipv4_address: a.ip.clone().unwrap_or_default(),
            },
        );
    }
    Ok(CreateContainer {
        name,
        config,
        host_config,
        endpoints_config,
    })
}

/// Runs a container verb.
pub async fn verb(ctx: &mut Ctx, v: ContainerVerb) -> Result<i32> {
    match v {
        ContainerVerb::Run(a) => run(ctx, a).await,
        ContainerVerb::Create(a) => create(ctx, a).await,
        ContainerVerb::Start(a) => start(ctx, a).await,
        ContainerVerb::Stop(a) => stop(ctx, a, false).await,
        ContainerVerb::Restart(a) => stop(ctx, a, true).await,
        ContainerVerb::Kill(a) => kill(ctx, a).await,
        ContainerVerb::Rm(a) => rm(ctx, a).await,
        ContainerVerb::Logs(a) => logs(ctx, a).await,
        ContainerVerb::Exec(a) => exec(ctx, a).await,
        ContainerVerb::Attach(a) => attach(ctx, a).await,
        ContainerVerb::Pause(t) => {
            let e = ctx.engine().await?;
            Ok(each(&t.containers, |c| {
                let mut e = e.clone();
                async move {
                    e.pause_container(ContainerRef { container: c })
                        .await
                        .rpc()?;
                    Ok(None)
                }
            })
            .await)
        }
        ContainerVerb::Unpause(t) => {
            let e = ctx.engine().await?;
            Ok(each(&t.containers, |c| {
                let mut e = e.clone();
                async move {
                    e.unpause_container(ContainerRef { container: c })
                        .await
                        .rpc()?;
                    Ok(None)
                }
            })
            .await)
        }
        ContainerVerb::Wait(t) => {
            let e = ctx.engine().await?;
            Ok(each(&t.containers, |c| {
                let mut e = e.clone();
                async move {
                    let r = e
                        .wait_container(ContainerRef { container: c })
                        .await
                        .rpc()?
                        .into_inner();
                    if !r.error.is_empty() {
                        bail!("{}", r.error);
                    }
                    Ok(Some(r.status_code.to_string()))
                }
            })
            .await)
        }
        ContainerVerb::Rename(a) => {
            let new_name = parse::container_name(&a.new_name)?;
            let mut e = ctx.engine().await?;
            e.rename_container(RenameRequest {
                container: a.container,
                new_name,
            })
            .await
            .rpc()?;
            Ok(0)
        }
        ContainerVerb::Diff(a) => {
            let mut e = ctx.engine().await?;
            let r = e
                .diff(ContainerRef {
                    container: a.container,
                })
                .await
                .rpc()?
                .into_inner();
            let changes: Vec<Change> = decode(&r.json)?;
            let mut out = std::io::stdout().lock();
            for c in changes {
                let _ = writeln!(out, "{} {}", c.kind, c.path);
            }
            Ok(0)
        }
        ContainerVerb::Export(a) => export(ctx, a).await,
        ContainerVerb::Commit(a) => commit(ctx, a).await,
        ContainerVerb::Port(a) => {
            let mut e = ctx.engine().await?;
            let r = e
                .inspect_container(ContainerRef {
                    container: a.container,
                })
                .await
                .rpc()?
                .into_inner();
            let inspect: agent_common::engine::ContainerInspect = decode(&r.json)?;
            for (port, bindings) in &inspect.network_settings.ports {
                for b in bindings {
                    println!("{port} -> {}:{}", b.host_ip, b.host_port);
                }
            }
            Ok(0)
        }
        ContainerVerb::Top(a) => {
            let mut e = ctx.engine().await?;
            let r = e
                .top(ContainerRef {
                    container: a.container,
                })
                .await
                .rpc()?
                .into_inner();
            let top: TopReply = decode(&r.json)?;
            let titles: Vec<&str> = top.titles.iter().map(String::as_str).collect();
            print!("{}", format::table(&titles, &top.processes));
            Ok(0)
        }
    }
}

/// Parses a JSON reply into `T`, with an error that names the problem.
pub fn decode<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json)
        .map_err(|e| anyhow!("the daemon sent a reply this client cannot read: {e}"))
}

fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("WARNING: {w}");
    }
}

/// Creates the container, pulling the image once if it is missing.
async fn create_with_pull(ctx: &mut Ctx, a: &RunArgs) -> Result<String> {
    let spec = build_create(a, &client_env)?;
    if a.tty && a.interactive && !std::io::stdin().is_terminal() && !a.detach {
        bail!("the input device is not a TTY: drop -t, or run from a terminal");
    }
    let spec_json = serde_json::to_string(&spec)?;
    let mut engine = ctx.engine().await?;
    let req = || agent_common::proto::CreateContainerRequest {
        spec_json: spec_json.clone(),
    };
    let reply = match engine.create_container(req()).await.rpc() {
        Ok(r) => r.into_inner(),
        Err(e)
            if rpc_code(&e) == Some(tonic::Code::NotFound)
                && e.to_string().starts_with("No such image") =>
        {
            eprintln!("Unable to find image '{}' locally", a.image);
            super::image::pull_image(ctx, &a.image, &a.registry, a.quiet, true).await?;
            engine.create_container(req()).await.rpc()?.into_inner()
        }
        Err(e) => return Err(e),
    };
    print_warnings(&reply.warnings);
    Ok(reply.id)
}

async fn create(ctx: &mut Ctx, a: RunArgs) -> Result<i32> {
    let id = create_with_pull(ctx, &a).await?;
    println!("{id}");
    Ok(0)
}

async fn run(ctx: &mut Ctx, a: RunArgs) -> Result<i32> {
    let keys = detach_keys(a.detach_keys.as_deref())?;
    let id = create_with_pull(ctx, &a).await?;
    let mut engine = ctx.engine().await?;
    if a.detach {
        engine
            .start_container(ContainerRef {
                container: id.clone(),
            })
            .await
            .rpc()?;
        println!("{id}");
        return Ok(0);
    }
    let outcome = attach_session(&engine, &id, true, a.interactive, a.tty, keys).await?;
    Ok(match outcome {
        Outcome::Exited(code) => code as i32,
        Outcome::Detached => 0,
    })
}

fn wrap_attach(i: Input) -> AttachInput {
    AttachInput {
        kind: Some(match i {
            Input::Stdin(b) => attach_input::Kind::Stdin(b),
            Input::Eof => attach_input::Kind::StdinEof(true),
            Input::Resize(s) => attach_input::Kind::Resize(s),
        }),
    }
}

fn wrap_exec(i: Input) -> ExecInput {
    ExecInput {
        kind: Some(match i {
            Input::Stdin(b) => exec_input::Kind::Stdin(b),
            Input::Eof => exec_input::Kind::StdinEof(true),
            Input::Resize(s) => exec_input::Kind::Resize(s),
        }),
    }
}

async fn attach_session(
    engine: &Engine,
    container: &str,
    start: bool,
    stdin: bool,
    tty: bool,
    detach_keys: Vec<u8>,
) -> Result<Outcome> {
    let first = AttachInput {
        kind: Some(attach_input::Kind::Start(AttachStart {
            container: container.to_string(),
            start,
            stdin,
        })),
    };
    let mut call_engine = engine.clone();
    session::run(
        first,
        wrap_attach,
        |stream| async move { call_engine.attach(stream).await },
        session::Options {
            tty,
            stdin,
            detach_keys,
            sig_proxy: (!tty).then(|| (engine.clone(), container.to_string())),
        },
    )
    .await
}

async fn inspect_container(engine: &mut Engine, container: &str) -> Result<ContainerInspect> {
    let r = engine
        .inspect_container(ContainerRef {
            container: container.to_string(),
        })
        .await
        .rpc()?
        .into_inner();
    decode(&r.json)
}

async fn start(ctx: &mut Ctx, a: StartArgs) -> Result<i32> {
    let mut engine = ctx.engine().await?;
    if a.attach || a.interactive {
        if a.containers.len() > 1 {
            bail!("you cannot start and attach multiple containers at once");
        }
        let keys = detach_keys(a.detach_keys.as_deref())?;
        let c = &a.containers[0];
        let info = inspect_container(&mut engine, c).await?;
        let stdin = a.interactive && info.config.open_stdin;
        let outcome = attach_session(&engine, c, true, stdin, info.config.tty, keys).await?;
        return Ok(match outcome {
            Outcome::Exited(code) => code as i32,
            Outcome::Detached => 0,
        });
    }
    Ok(each(&a.containers, |c| {
        let mut e = engine.clone();
        async move {
            e.start_container(ContainerRef { container: c })
                .await
                .rpc()?;
            Ok(None)
        }
    })
    .await)
}

async fn stop(ctx: &mut Ctx, a: StopArgs, restart: bool) -> Result<i32> {
    let engine = ctx.engine().await?;
    Ok(each(&a.containers, |c| {
        let mut e = engine.clone();
        let req = StopRequest {
            container: c,
            timeout_seconds: a.time,
        };
        async move {
            if restart {
                e.restart_container(req).await.rpc()?;
            } else {
                e.stop_container(req).await.rpc()?;
            }
            Ok(None)
        }
    })
    .await)
}

async fn kill(ctx: &mut Ctx, a: KillArgs) -> Result<i32> {
    let signal = parse::signal(&a.signal)?;
    let engine = ctx.engine().await?;
    Ok(each(&a.containers, |c| {
        let mut e = engine.clone();
        let signal = signal.clone();
        async move {
            e.kill_container(KillRequest {
                container: c,
                signal,
            })
            .await
            .rpc()?;
            Ok(None)
        }
    })
    .await)
}

async fn rm(ctx: &mut Ctx, a: RmArgs) -> Result<i32> {
    let engine = ctx.engine().await?;
    Ok(each(&a.containers, |c| {
        let mut e = engine.clone();
        async move {
            e.remove_container(RemoveContainerRequest {
                container: c,
                force: a.force,
                volumes: a.volumes,
            })
            .await
            .rpc()?;
            Ok(None)
        }
    })
    .await)
}

/// A ps row with Docker's `--format` field names.
pub fn ps_row(c: &ContainerSummary, no_trunc: bool, now: i64) -> Value {
    let id = if no_trunc {
        c.id.clone()
    } else {
        format::short_id(&c.id)
    };
    let command = if no_trunc {
        c.command.clone()
    } else {
        format::ellipsis(&c.command, 20)
    };
    let image = if c.image.starts_with("sha256:") && !no_trunc {
        format::short_id(&c.image)
    } else {
        c.image.clone()
    };
    let names: Vec<&str> = c.names.iter().map(|n| n.trim_start_matches('/')).collect();
    let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    json!({
        "ID": id,
        "Image": image,
        "Command": format!("\"{command}\""),
        "CreatedAt": format::docker_time(c.created),
        "RunningFor": format::human_duration(now - c.created),
        "Ports": c.ports,
        "State": c.state,
        "Status": c.status,
        "Names": names.join(","),
        "Labels": labels.join(","),
    })
}

/// Whether a container passes all `--filter` values (ANDed across keys,
/// ORed within one key, as Docker).
pub fn ps_matches(c: &ContainerSummary, filters: &[(String, String)]) -> bool {
    let mut keys: Vec<&str> = filters.iter().map(|(k, _)| k.as_str()).collect();
    keys.dedup();
    keys.iter().all(|key| {
        filters
            .iter()
            .filter(|(k, _)| k == key)
            .any(|(_, v)| match *key {
                "name" => c
                    .names
                    .iter()
                    .any(|n| n.trim_start_matches('/').contains(v.as_str())),
                "id" => c.id.starts_with(v.as_str()),
                "status" => c.state == *v,
                "ancestor" => c.image == *v || c.image_id.contains(v.as_str()),
                "label" => match v.split_once('=') {
                    Some((k, val)) => c.labels.get(k).is_some_and(|x| x == val),
                    None => c.labels.contains_key(v.as_str()),
                },
                _ => false,
            })
    })
}

fn parse_filters(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|f| {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| anyhow!("invalid filter {f:?}: use KEY=VALUE"))?;
            if !matches!(k, "name" | "id" | "status" | "ancestor" | "label") {
                bail!("invalid filter key {k:?}: use name, id, status, ancestor or label");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn ps_title(field: &str) -> String {
    match field {
        "ID" => "CONTAINER ID".into(),
        "RunningFor" => "CREATED".into(),
        "CreatedAt" => "CREATED AT".into(),
        other => other.to_uppercase(),
    }
}

/// `ps`.
pub async fn ps(ctx: &mut Ctx, a: PsArgs) -> Result<i32> {
    let filters = parse_filters(&a.filter)?;
    let format = OutputFormat::parse(a.format.as_deref());
    let mut engine = ctx.engine().await?;
    let all = a.all || a.latest || a.last.is_some() || filters.iter().any(|(k, _)| k == "status");
    let r = engine
        .list_containers(ListContainersRequest { all })
        .await
        .rpc()?
        .into_inner();
    print_warnings(&r.warnings);
    let mut list: Vec<ContainerSummary> = decode(&r.json)?;
    list.retain(|c| ps_matches(c, &filters));
    list.sort_by_key(|c| std::cmp::Reverse(c.created));
    if a.latest {
        list.truncate(1);
    }
    if let Some(n) = a.last {
        list.truncate(n);
    }
    let now = format::now_unix();
    let rows: Vec<Value> = list.iter().map(|c| ps_row(c, a.no_trunc, now)).collect();
    if a.quiet {
        for r in &rows {
            println!("{}", r["ID"].as_str().unwrap_or_default());
        }
        return Ok(0);
    }
    let cells = |r: &Value| -> Vec<String> {
        [
            "ID",
            "Image",
            "Command",
            "RunningFor",
            "Status",
            "Ports",
            "Names",
        ]
        .iter()
        .map(|k| {
            let s = r[k].as_str().unwrap_or_default();
            if *k == "RunningFor" {
                format!("{s} ago")
            } else {
                s.to_string()
            }
        })
        .collect()
    };
    let out = format::render_rows(
        &format,
        &rows,
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
        ],
        &cells,
        &ps_title,
    )?;
    print!("{out}");
    Ok(0)
}

/// Adds RFC 3339 timestamps at the start of each line of `data`.
fn timestamp_lines(data: &[u8], time_nanos: i64, at_line_start: &mut bool) -> Vec<u8> {
    let stamp = format::rfc3339_nanos(time_nanos);
    let mut out = Vec::with_capacity(data.len() + 32);
    for &b in data {
        if *at_line_start {
            out.extend_from_slice(stamp.as_bytes());
            out.push(b' ');
            *at_line_start = false;
        }
        out.push(b);
        if b == b'\n' {
            *at_line_start = true;
        }
    }
    out
}

async fn logs(ctx: &mut Ctx, a: LogsArgs) -> Result<i32> {
    let tail = parse::tail(&a.tail)?;
    let mut engine = ctx.engine().await?;
    let mut stream = engine
        .logs(LogsRequest {
            container: a.container,
            follow: a.follow,
            tail,
            stdout: true,
            stderr: true,
        })
        .await
        .rpc()?
        .into_inner();
    let mut line_start = [true, true];
    while let Some(mut chunk) = stream.message().await.rpc()? {
        if !chunk.error.is_empty() {
            bail!("{}", chunk.error);
        }
        if a.timestamps {
            let idx = (chunk.stream as usize).min(1);
            chunk.data = timestamp_lines(&chunk.data, chunk.time_nanos, &mut line_start[idx]);
        }
        session::write_chunk(&chunk)?;
    }
    Ok(0)
}

async fn exec(ctx: &mut Ctx, a: ExecArgs) -> Result<i32> {
    let keys = detach_keys(a.detach_keys.as_deref())?;
    let env = collect_env(&a.env, &a.env_file, &client_env)?;
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') {
            bail!("invalid --workdir {w:?}: the working directory must be an absolute path");
        }
    }
    if a.tty && a.interactive && !a.detach && !std::io::stdin().is_terminal() {
        bail!("the input device is not a TTY: drop -t, or run from a terminal");
    }
    let engine = ctx.engine().await?;
    let stdin = a.interactive && !a.detach;
    let first = ExecInput {
        kind: Some(exec_input::Kind::Start(ExecStart {
            container: a.container.clone(),
            cmd: a.command,
            env,
            user: a.user.unwrap_or_default(),
            workdir: a.workdir.unwrap_or_default(),
            tty: a.tty,
            stdin,
        })),
    };
    if a.detach {
        // The process was started once the daemon answered; leave it running.
        let mut e = engine.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(first)
            .await
            .map_err(|_| anyhow!("exec stream closed"))?;
        let mut stream = e
            .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .rpc()?
            .into_inner();
        // An immediate failure (no such executable) arrives as the first message.
        if let Ok(Some(first)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), stream.message())
                .await
                .unwrap_or(Ok(None))
        {
            if !first.error.is_empty() {
                bail!("{}", first.error);
            }
        }
        return Ok(0);
    }
    let mut call_engine = engine.clone();
    let outcome = session::run(
        first,
        wrap_exec,
        |stream| async move { call_engine.exec(stream).await },
        session::Options {
            tty: a.tty,
            stdin,
            detach_keys: keys,
            sig_proxy: None,
        },
    )
    .await?;
    Ok(match outcome {
        Outcome::Exited(code) => code as i32,
        Outcome::Detached => 0,
    })
}

async fn attach(ctx: &mut Ctx, a: AttachArgs) -> Result<i32> {
    let keys = detach_keys(a.detach_keys.as_deref())?;
    let mut engine = ctx.engine().await?;
    let info = inspect_container(&mut engine, &a.container).await?;
    if !info.state.running {
        bail!("You cannot attach to a stopped container, start it first");
    }
    if info.state.paused {
        bail!("You cannot attach to a paused container, unpause it first");
    }
    let stdin = info.config.open_stdin && !a.no_stdin;
    if info.config.tty && stdin && !std::io::stdin().is_terminal() {
        bail!("the input device is not a TTY: use --no-stdin, or attach from a terminal");
    }
    let outcome =
        attach_session(&engine, &a.container, false, stdin, info.config.tty, keys).await?;
    Ok(match outcome {
        Outcome::Exited(code) => code as i32,
        Outcome::Detached => 0,
    })
}

/// Opens the output for `export`/`save`: the file, or stdout unless it is a terminal.
pub fn open_output(path: Option<&std::path::Path>) -> Result<Box<dyn Write>> {
    match path {
        Some(p) => Ok(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .with_context(|| format!("failed to create {}", p.display()))?,
        ))),
        None => {
            if std::io::stdout().is_terminal() {
                bail!(
                    "refusing to write a tar archive to a terminal: use -o FILE or redirect stdout"
                );
            }
            Ok(Box::new(std::io::stdout().lock()))
        }
    }
}

/// Copies a `DataChunk` stream into `out`, removing a partial file on failure.
pub async fn copy_chunks(
    mut stream: tonic::Streaming<agent_common::proto::DataChunk>,
    path: Option<&std::path::Path>,
) -> Result<()> {
    let mut out = open_output(path)?;
    let result: Result<()> = async {
        while let Some(chunk) = stream.message().await.rpc()? {
            out.write_all(&chunk.data)
                .context("failed to write the archive")?;
        }
        out.flush().context("failed to write the archive")?;
        Ok(())
    }
    .await;
    if result.is_err() {
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

async fn export(ctx: &mut Ctx, a: ExportArgs) -> Result<i32> {
    if a.output.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write a tar archive to a terminal: use -o FILE or redirect stdout");
    }
    let mut engine = ctx.engine().await?;
    let stream = engine
        .export(ContainerRef {
            container: a.container,
        })
        .await
        .rpc()?
        .into_inner();
    copy_chunks(stream, a.output.as_deref()).await?;
    Ok(0)
}

async fn commit(ctx: &mut Ctx, a: CommitArgs) -> Result<i32> {
    let mut engine = ctx.engine().await?;
    let r = engine
        .commit(CommitRequest {
            container: a.container,
            reference: a.reference.unwrap_or_default(),
            comment: a.message.unwrap_or_default(),
            author: a.author.unwrap_or_default(),
            changes: a.change,
            pause: a.pause,
        })
        .await
        .rpc()?
        .into_inner();
    println!("{}", r.id);
    Ok(0)
}

/// `container prune`.
pub async fn prune(ctx: &mut Ctx, a: PruneArgs) -> Result<i32> {
    if !a.force && !super::confirm("WARNING! This will remove all stopped containers.")? {
        return Ok(0);
    }
    let mut engine = ctx.engine().await?;
    let r = engine
        .prune_containers(agent_common::proto::Empty {})
        .await
        .rpc()?
        .into_inner();
    let report: PruneReport = decode(&r.json)?;
    print_prune("Deleted Containers:", &report);
    Ok(0)
}

/// Prints a prune report the way Docker does.
pub fn print_prune(title: &str, report: &PruneReport) {
    if !report.deleted.is_empty() {
        println!("{title}");
        for d in &report.deleted {
            println!("{d}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        format::human_size(report.space_reclaimed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut full = vec!["flotilla", "run"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Container(ContainerVerb::Run(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn env(k: &str) -> Option<String> {
        (k == "FROM_CLIENT").then(|| "yes".to_string())
    }

    #[test]
    fn run_flags_become_the_create_request() {
        let a = run_args(&[
            "--name",
            "web",
            "--rm",
            "-e",
            "A=1",
            "-e",
            "FROM_CLIENT",
            "-e",
            "UNSET",
            "-m",
            "512m",
            "--cpus",
            "1.5",
            "-c",
            "512",
            "--pids-limit",
            "100",
            "-v",
            "data:/data:ro",
            "--restart",
            "no",
            "--stop-signal",
            "term",
            "--stop-timeout",
            "5",
            "--init",
            "--read-only",
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "ALL",
            "-l",
            "tier=web",
            "--network",
            "none",
            "--expose",
            "80",
            "-w",
            "/srv",
            "-u",
            "nobody",
            "-h",
            "box",
            "--entrypoint",
            "",
            "busybox",
            "httpd",
            "-f",
        ]);
        let c = build_create(&a, &env).unwrap();
        assert_eq!(c.name.as_deref(), Some("web"));
        let h = &c.host_config;
        assert!(h.auto_remove && h.init && h.readonly_rootfs);
        assert_eq!(h.memory, 512 << 20);
        assert_eq!(h.nano_cpus, 1_500_000_000);
        assert_eq!(h.cpu_shares, 512);
        assert_eq!(h.pids_limit, 100);
        assert_eq!(h.binds, vec!["data:/data:ro"]);
        assert_eq!(h.network_mode, "none");
        assert_eq!(h.cap_add, vec!["CAP_NET_ADMIN"]);
        assert_eq!(h.cap_drop, vec!["ALL"]);
        let cfg = &c.config;
        assert_eq!(cfg.env, vec!["A=1", "FROM_CLIENT=yes"]);
        assert_eq!(cfg.cmd, Some(vec!["httpd".to_string(), "-f".to_string()]));
        assert_eq!(cfg.entrypoint, Some(vec![String::new()]));
        assert_eq!(cfg.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(cfg.stop_timeout, Some(5));
        assert_eq!(cfg.labels["tier"], "web");
        assert!(cfg.exposed_ports.contains_key("80/tcp"));
        assert_eq!(
            (cfg.working_dir.as_str(), cfg.user.as_str()),
            ("/srv", "nobody")
        );
        assert_eq!(cfg.hostname, "box");
        assert!(cfg.attach_stdout && !cfg.attach_stdin && !cfg.open_stdin);
    }

    #[test]
    fn defaults_leave_cmd_and_entrypoint_to_the_image() {
        let c = build_create(&run_args(&["-d", "-it", "busybox"]), &env).unwrap();
        assert_eq!(c.config.cmd, None);
        assert_eq!(c.config.entrypoint, None);
        assert_eq!(c.host_config.network_mode, "default");
        assert!(c.config.tty && c.config.open_stdin && !c.config.stdin_once);
        assert!(!c.config.attach_stdout);
        let c = build_create(&run_args(&["-i", "busybox"]), &env).unwrap();
        assert!(c.config.stdin_once && c.config.attach_stdin);
        let c = build_create(&run_args(&["--pids-limit", "-1", "busybox"]), &env).unwrap();
        assert_eq!(c.host_config.pids_limit, 0);
        let c = build_create(
            &run_args(&["-p", "127.0.0.1:8080:80", "-P", "busybox"]),
            &env,
        )
        .unwrap();
        assert_eq!(c.host_config.port_bindings["80/tcp"][0].host_port, "8080");
        assert_eq!(
            c.host_config.port_bindings["80/tcp"][0].host_ip,
            "127.0.0.1"
        );
        assert!(c.host_config.publish_all_ports);
    }

    #[test]
    fn invalid_run_flags_are_refused_before_the_daemon() {
        let cases: &[(&[&str], &str)] = &[
            (&["-m", "12q", "busybox"], "invalid size"),
            (&["--cpus", "x", "busybox"], "--cpus"),
            (&["--restart", "always:2", "busybox"], "on-failure"),
            (
                &["--rm", "--restart", "always", "busybox"],
                "--restart and --rm",
            ),
            (&["-v", "data:rel", "busybox"], "absolute"),
            (
                &["--network", "over lay", "busybox"],
                "bridge, none, host, container:NAME or a network name",
            ),
            (&["-l", "=x", "busybox"], "invalid label"),
            (&["--stop-signal", "NOPE", "busybox"], "invalid signal"),
            (&["--name", "a b", "busybox"], "invalid container name"),
            (&["-w", "rel", "busybox"], "absolute"),
            (
                &["-p", "8080:80", "--network", "host", "busybox"],
                "conflicting options",
            ),
            (&["-p", "x:80", "busybox"], "invalid --publish"),
            (&["--cap-add", "FLY", "busybox"], "unknown capability"),
            (&["--env-file", "/nonexistent/env", "busybox"], "env file"),
        ];
        for (args, want) in cases {
            let e = build_create(&run_args(args), &env).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn env_files_come_before_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("e.env");
        std::fs::write(&f, "# c\nA=file\nFROM_CLIENT\n").unwrap();
        let a = run_args(&["--env-file", f.to_str().unwrap(), "-e", "A=flag", "busybox"]);
        let c = build_create(&a, &env).unwrap();
        assert_eq!(c.config.env, vec!["A=file", "FROM_CLIENT=yes", "A=flag"]);
    }

    fn summary() -> ContainerSummary {
        ContainerSummary {
            id: "0123456789abcdef0123".into(),
            names: vec!["/web".into()],
            image: "busybox".into(),
            image_id: "sha256:feed".into(),
            command: "httpd -f -p 80 -h /var/www/html".into(),
            created: 1000,
            state: "running".into(),
            status: "Up 2 minutes".into(),
            ports: "0.0.0.0:8080->80/tcp".into(),
            labels: [("tier".to_string(), "web".to_string())].into(),
        }
    }

    #[test]
    fn ps_rows_truncate_like_docker() {
        let r = ps_row(&summary(), false, 1150);
        assert_eq!(r["ID"], "0123456789ab");
        assert_eq!(r["Command"], "\"httpd -f -p 80 -h /…\"");
        assert_eq!(r["RunningFor"], "2 minutes");
        assert_eq!(r["Names"], "web");
        let r = ps_row(&summary(), true, 1150);
        assert_eq!(r["ID"], "0123456789abcdef0123");
        assert_eq!(r["Command"], "\"httpd -f -p 80 -h /var/www/html\"");
    }

    #[test]
    fn ps_filters() {
        let c = summary();
        let f = |raw: &[&str]| {
            let raw: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
            ps_matches(&c, &parse_filters(&raw).unwrap())
        };
        assert!(f(&["name=we"]));
        assert!(!f(&["name=db"]));
        assert!(f(&["name=db", "name=web"]));
        assert!(f(&["status=running", "label=tier=web"]));
        assert!(!f(&["status=exited"]));
        assert!(f(&["label=tier"]));
        assert!(!f(&["label=tier=db"]));
        assert!(f(&["id=0123"]));
        assert!(f(&["ancestor=busybox"]));
        assert!(parse_filters(&["bogus=1".to_string()]).is_err());
        assert!(parse_filters(&["name".to_string()]).is_err());
    }

    #[test]
    fn timestamps_prefix_each_line_across_chunks() {
        let mut start = true;
        let a = timestamp_lines(b"one\ntw", 0, &mut start);
        let b = timestamp_lines(b"o\n", 0, &mut start);
        let ts = "1970-01-01T00:00:00.000000000Z ";
        assert_eq!(String::from_utf8(a).unwrap(), format!("{ts}one\n{ts}tw"));
        assert_eq!(String::from_utf8(b).unwrap(), "o\n");
        assert!(start);
    }
}
