//! Cluster verbs, answered by a manager's control API: `node ls/inspect/
//! update/promote/demote/rm`, `cluster info`, `cluster client-cert
//! create/ls/revoke`, `join-token`.

use super::Ctx;
use crate::client::RpcResult;
use crate::format::{self, OutputFormat};
use agent_common::cluster::{ClusterInfo, ManagerStatus, NodeView};
use agent_common::control_proto::{
    ClientCertRequest, Empty, JoinTokenRequest, NodeRef, ReadRequest, RemoveNodeRequest,
    RevokeClientCertRequest, UpdateNodeRequest,
};
use agent_common::objects::{Availability, DrainOrder, NodeRole, NodeStatus};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

/// `flotilla node …`.
#[derive(Subcommand, Debug)]
pub enum NodeGroup {
    /// List the cluster's nodes (`*` marks the node answering).
    #[command(alias = "list")]
    Ls(NodeLsArgs),
    /// Display detailed information on one or more nodes.
    Inspect(NodeInspectArgs),
    /// Change a node's availability, drain order or labels.
    Update(NodeUpdateArgs),
    /// Make workers managers (nodes running flotilla-manager only).
    Promote(NodesArgs),
    /// Make managers workers; refused if it would leave no quorum.
    Demote(NodesArgs),
    /// Remove nodes from the cluster (their certificates are revoked).
    #[command(alias = "remove")]
    Rm(NodeRmArgs),
}

/// `flotilla cluster …`.
#[derive(Subcommand, Debug)]
pub enum ClusterGroup {
    /// Managers, leader, Raft term and index, nodes by status.
    Info(ClusterInfoArgs),
    /// Certificates for remote clients (`-H tcp://MANAGER:2377 --tlscert …`):
    /// create, list and revoke them (needs the admin scope).
    #[command(subcommand, name = "client-cert")]
    ClientCert(ClientCertGroup),
}

/// `flotilla cluster client-cert …`.
#[derive(Subcommand, Debug)]
pub enum ClientCertGroup {
    /// Issue a certificate for a remote client and write ca.pem, cert.pem
    /// and key.pem (the key is made on this machine).
    Create(ClientCertCreateArgs),
    /// List the client certificates the cluster issued.
    #[command(alias = "list")]
    Ls(ClientCertLsArgs),
    /// Revoke client certificates by serial (or a unique prefix): managers
    /// refuse them from then on.
    #[command(alias = "rm")]
    Revoke(ClientCertRevokeArgs),
}

/// Flags of `cluster client-cert create`.
#[derive(Args, Debug)]
pub struct ClientCertCreateArgs {
    /// Directory to write ca.pem, cert.pem and key.pem to.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: std::path::PathBuf,
    /// Validity (e.g. 30d, 12h; at most 365d).
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub expiry: std::time::Duration,
    /// A name to recognize the certificate by in `client-cert ls`.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Grant the admin scope: the manager join token, promote and demote, and
    /// managing client certificates.
    #[arg(long)]
    pub admin: bool,
}

/// Flags of `cluster client-cert ls`.
#[derive(Args, Debug)]
pub struct ClientCertLsArgs {
    /// Only display serials.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: table or json.
    #[arg(long)]
    pub format: Option<String>,
}

/// Flags of `cluster client-cert revoke`.
#[derive(Args, Debug)]
pub struct ClientCertRevokeArgs {
    /// Serials (hex, as `client-cert ls` shows them) or unique prefixes.
    #[arg(required = true, value_name = "SERIAL")]
    pub serials: Vec<String>,
}

/// Flags of `node ls`.
#[derive(Args, Debug)]
pub struct NodeLsArgs {
    /// Only display IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: table, json, or a Go-style template.
    #[arg(long)]
    pub format: Option<String>,
    /// Answer from this manager's own copy of the state, without asking the
    /// leader (may be stale).
    #[arg(long)]
    pub local: bool,
}

/// Flags of `node inspect`.
#[derive(Args, Debug)]
pub struct NodeInspectArgs {
    /// Print a human-readable summary instead of JSON.
    #[arg(long)]
    pub pretty: bool,
    /// Format the output with a Go-style template.
    #[arg(short, long)]
    pub format: Option<String>,
    /// Answer from this manager's own copy of the state.
    #[arg(long)]
    pub local: bool,
    /// Nodes: ID, ID prefix, hostname, or `self`.
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// Node availability, as `--availability` takes it.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum AvailabilityArg {
    /// Tasks may be scheduled on the node.
    Active,
    /// No new tasks; running ones stay.
    Pause,
    /// No tasks: running ones are moved to other nodes.
    Drain,
}

/// Flags of `node update`.
#[derive(Args, Debug)]
pub struct NodeUpdateArgs {
    /// Availability of the node.
    #[arg(long, value_enum)]
    pub availability: Option<AvailabilityArg>,
    /// How a drain of the node moves its replicated tasks: start-first (the
    /// default: each replacement runs before the task it replaces stops) or
    /// stop-first (stop at once; services updated start-first still move
    /// start-first).
    #[arg(long = "drain-order", value_name = "ORDER", value_parser = ["start-first", "stop-first"])]
    pub drain_order: Option<String>,
    /// Add or update a node label (KEY=VALUE); repeatable.
    #[arg(long = "label-add", value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a node label; repeatable.
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// The node.
    #[arg(value_name = "NODE")]
    pub node: String,
}

/// Nodes as positional arguments.
#[derive(Args, Debug)]
pub struct NodesArgs {
    /// Nodes: ID, ID prefix or hostname.
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// Flags of `node rm`.
#[derive(Args, Debug)]
pub struct NodeRmArgs {
    /// Remove even if the node is still up (or, for a manager, still a Raft member).
    #[arg(short, long)]
    pub force: bool,
    /// Nodes: ID, ID prefix or hostname.
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// Flags of `cluster info`.
#[derive(Args, Debug)]
pub struct ClusterInfoArgs {
    /// Output format: json, or a Go-style template.
    #[arg(short, long)]
    pub format: Option<String>,
    /// Answer from this manager's own state, without asking the leader.
    #[arg(long)]
    pub local: bool,
}

/// The role a token admits.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum TokenRole {
    /// Join as a worker (`flotilla-worker join`).
    Worker,
    /// Join as a manager (`flotilla-manager join`).
    Manager,
}

/// Flags of `join-token`.
#[derive(Args, Debug)]
pub struct JoinTokenArgs {
    /// Make a new token; the old one stops working at once.
    #[arg(long)]
    pub rotate: bool,
    /// Only display the token.
    #[arg(short, long)]
    pub quiet: bool,
    /// Which token.
    #[arg(value_enum)]
    pub role: TokenRole,
}

fn decode<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).context("the manager sent an unreadable answer")
}

fn status_word(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Ready => "Ready",
        NodeStatus::Down => "Down",
        NodeStatus::Unknown => "Unknown",
    }
}

fn availability_word(a: Availability) -> &'static str {
    match a {
        Availability::Active => "Active",
        Availability::Pause => "Pause",
        Availability::Drain => "Drain",
    }
}

/// Runs a `node` subcommand.
pub async fn node(ctx: &mut Ctx, g: NodeGroup) -> Result<i32> {
    let mut control = ctx.control().await?;
    match g {
        NodeGroup::Ls(a) => {
            let reply = control
                .list_nodes(ReadRequest { local: a.local })
                .await
                .rpc()?
                .into_inner();
            let nodes: Vec<NodeView> = decode(&reply.json)?;
            if a.quiet {
                for n in &nodes {
                    println!("{}", n.id);
                }
                return Ok(0);
            }
            let rows: Vec<Value> = nodes
                .iter()
                .map(|n| serde_json::to_value(n).unwrap_or(Value::Null))
                .collect();
            let format = OutputFormat::parse(a.format.as_deref());
            if matches!(format, OutputFormat::Json) {
                for r in &rows {
                    println!("{r}");
                }
                return Ok(0);
            }
            let cells = |v: &Value| -> Vec<String> {
                let n: NodeView = serde_json::from_value(v.clone()).unwrap_or_default();
                vec![
                    format!("{}{}", n.id, if n.is_self { " *" } else { "" }),
                    n.hostname.clone(),
                    status_word(n.status).into(),
                    availability_word(n.availability).into(),
                    n.manager_status
                        .as_ref()
                        .map(|m| m.column())
                        .unwrap_or_default(),
                ]
            };
            print!(
                "{}",
                format::render_rows(
                    &format,
                    &rows,
                    &["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"],
                    &cells,
                    &|s: &str| s.to_uppercase(),
                )?
            );
            if a.format.is_none() {
                let managers: Vec<ManagerStatus> = nodes
                    .iter()
                    .filter_map(|n| n.manager_status.clone())
                    .collect();
                if let Some(w) = agent_common::cluster::quorum_warning(&managers) {
                    eprintln!("{w}");
                }
            }
            Ok(0)
        }
        NodeGroup::Inspect(a) => {
            let mut out = Vec::new();
            let mut code = 0;
            for n in &a.nodes {
                match control
                    .inspect_node(NodeRef {
                        node: n.clone(),
                        local: a.local,
                    })
                    .await
                    .rpc()
                {
                    Ok(r) => out.push(decode::<NodeView>(&r.into_inner().json)?),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            if a.pretty {
                for n in &out {
                    print_pretty(n);
                }
            } else if let Some(t) = &a.format {
                for n in &out {
                    let v = serde_json::to_value(n)?;
                    println!("{}", format::render_template(t, &v)?);
                }
            } else {
                let v = serde_json::to_value(&out)?;
                println!("{}", format::pretty_json(&v));
            }
            Ok(code)
        }
        NodeGroup::Update(a) => {
            if a.availability.is_none()
                && a.drain_order.is_none()
                && a.label_add.is_empty()
                && a.label_rm.is_empty()
            {
                anyhow::bail!(
                    "nothing to update: give --availability, --drain-order, --label-add or --label-rm"
                );
            }
            let availability = match a.availability {
                None => "",
                Some(AvailabilityArg::Active) => "active",
                Some(AvailabilityArg::Pause) => "pause",
                Some(AvailabilityArg::Drain) => "drain",
            };
            control
                .update_node(UpdateNodeRequest {
                    node: a.node.clone(),
                    availability: availability.into(),
                    label_add: a.label_add,
                    label_rm: a.label_rm,
                    drain_order: a.drain_order.unwrap_or_default(),
                })
                .await
                .rpc()?;
            println!("{}", a.node);
            Ok(0)
        }
        NodeGroup::Promote(a) => {
            let mut code = 0;
            for n in &a.nodes {
                match control
                    .promote_node(NodeRef {
                        node: n.clone(),
                        local: false,
                    })
                    .await
                    .rpc()
                {
                    Ok(_) => println!("Node {n} promoted to a manager in the cluster."),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        NodeGroup::Demote(a) => {
            let mut code = 0;
            for n in &a.nodes {
                match control
                    .demote_node(NodeRef {
                        node: n.clone(),
                        local: false,
                    })
                    .await
                    .rpc()
                {
                    Ok(_) => println!("Manager {n} demoted in the cluster."),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        NodeGroup::Rm(a) => {
            let mut code = 0;
            for n in &a.nodes {
                match control
                    .remove_node(RemoveNodeRequest {
                        node: n.clone(),
                        force: a.force,
                    })
                    .await
                    .rpc()
                {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

fn print_pretty(n: &NodeView) {
    println!("ID:\t\t\t{}", n.id);
    println!("Hostname:\t\t{}", n.hostname);
    if !n.labels.is_empty() {
        println!("Labels:");
        for (k, v) in &n.labels {
            println!(" - {k}={v}");
        }
    }
    println!(
        "Role:\t\t\t{}",
        match n.role {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        }
    );
    println!("Availability:\t\t{}", availability_word(n.availability));
    println!(
        "Drain order:\t\t{}",
        match n.drain_order {
            DrainOrder::StartFirst => "start-first",
            DrainOrder::StopFirst => "stop-first",
        }
    );
    println!(
        "Status:\n State:\t\t\t{}\n Addr:\t\t\t{}",
        status_word(n.status),
        n.addr
    );
    if let Some(r) = &n.resources {
        println!(
            "Resources:\n CPUs:\t\t\t{}\n Memory:\t\t{}",
            r.nano_cpus as f64 / 1e9,
            crate::format::human_size(r.memory_bytes)
        );
    }
    if let Some(m) = &n.manager_status {
        println!(
            "Manager Status:\n Address:\t\t{}\n Raft Status:\t\t{}\n Leader:\t\t{}",
            m.addr,
            m.column(),
            if m.leader { "Yes" } else { "No" }
        );
    }
}

/// Runs a `cluster` subcommand.
pub async fn cluster(ctx: &mut Ctx, g: ClusterGroup) -> Result<i32> {
    match g {
        ClusterGroup::ClientCert(g) => client_cert(ctx, g).await,
        ClusterGroup::Info(a) => {
            let mut control = ctx.control().await?;
            let reply = control
                .cluster_info(ReadRequest { local: a.local })
                .await
                .rpc()?
                .into_inner();
            let info: ClusterInfo = decode(&reply.json)?;
            match a.format.as_deref() {
                Some("json") => println!("{}", format::pretty_json(&serde_json::to_value(&info)?)),
                Some(t) => println!(
                    "{}",
                    format::render_template(t, &serde_json::to_value(&info)?)?
                ),
                None => {
                    println!("Cluster ID:\t{}", info.id);
                    println!("Node ID:\t{}", info.node_id);
                    println!(
                        "Leader:\t\t{}",
                        match (&info.leader_id, &info.leader_addr) {
                            (Some(id), Some(addr)) => format!("{id} ({addr})"),
                            (Some(id), None) => id.clone(),
                            _ => "none (no quorum?)".into(),
                        }
                    );
                    println!(
                        "Raft:\t\tterm {}, last index {}, applied index {}",
                        info.raft_term, info.raft_last_index, info.raft_applied_index
                    );
                    let voters = info.managers.iter().filter(|m| m.voter).count();
                    println!(
                        "Managers:\t{} voters, {} joining (learners)",
                        voters,
                        info.managers.len() - voters
                    );
                    for m in info.managers.iter().filter(|m| m.voter) {
                        println!("  {}\t{}", m.addr, m.column());
                    }
                    for m in info.managers.iter().filter(|m| !m.voter) {
                        println!("  {}\t{} (not voting yet)", m.addr, m.column());
                    }
                    if let Some(w) = agent_common::cluster::quorum_warning(&info.managers) {
                        println!("{w}");
                    }
                    let by: Vec<String> = info
                        .nodes_by_status
                        .iter()
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect();
                    println!("Nodes:\t\t{} ({})", info.nodes, by.join(", "));
                    println!("Heartbeat:\t{} ms", info.heartbeat_period_ms);
                    println!("CA digest:\t{}", info.ca_digest);
                }
            }
            Ok(0)
        }
    }
}

/// Runs a `cluster client-cert` subcommand.
async fn client_cert(ctx: &mut Ctx, g: ClientCertGroup) -> Result<i32> {
    use agent_common::objects::ClientCertRecord;
    let mut control = ctx.control().await?;
    match g {
        ClientCertGroup::Create(a) => {
            let key = agent_common::pki::NodeKey::generate()?;
            let reply = control
                .issue_client_cert(ClientCertRequest {
                    csr_pem: key.csr()?.to_pem(),
                    name: a.name.clone(),
                    expiry_secs: a.expiry.as_secs().max(1),
                    admin: a.admin,
                })
                .await
                .rpc()?
                .into_inner();
            std::fs::create_dir_all(&a.out)
                .with_context(|| format!("failed to create {}", a.out.display()))?;
            for (name, text) in [
                ("ca.pem", &reply.ca_pem),
                ("cert.pem", &reply.cert_pem),
                ("key.pem", &key.to_pem()),
            ] {
                let path = a.out.join(name);
                agent_common::pki::write_private_file(&path, text.as_bytes())
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            println!("{}", reply.serial);
            eprintln!(
                "Wrote ca.pem, cert.pem and key.pem to {}. Use them with: flotilla -H tcp://MANAGER-ADDR:2377 --tlscacert ca.pem --tlscert cert.pem --tlskey key.pem …",
                a.out.display()
            );
            Ok(0)
        }
        ClientCertGroup::Ls(a) => {
            let reply = control
                .list_client_certs(Empty {})
                .await
                .rpc()?
                .into_inner();
            let certs: Vec<ClientCertRecord> = decode(&reply.json)?;
            if a.quiet {
                for c in &certs {
                    println!("{}", c.serial);
                }
                return Ok(0);
            }
            if a.format.as_deref() == Some("json") {
                for c in &certs {
                    println!("{}", serde_json::to_string(c)?);
                }
                return Ok(0);
            }
            let now = format::now_unix();
            let rows: Vec<Vec<String>> = certs
                .iter()
                .map(|c| {
                    let status = if c.revoked_at != 0 {
                        "revoked".to_string()
                    } else if (c.expires_at as i64) <= now {
                        "expired".to_string()
                    } else {
                        format!(
                            "expires in {}",
                            format::human_duration(c.expires_at as i64 - now)
                        )
                    };
                    vec![
                        c.serial.clone(),
                        c.name.clone(),
                        if c.admin { "admin" } else { "" }.to_string(),
                        format::ago(c.issued_at as i64, now),
                        status,
                    ]
                })
                .collect();
            print!(
                "{}",
                format::table(&["SERIAL", "NAME", "SCOPE", "CREATED", "STATUS"], &rows)
            );
            Ok(0)
        }
        ClientCertGroup::Revoke(a) => {
            let mut code = 0;
            for serial in a.serials {
                match control
                    .revoke_client_cert(RevokeClientCertRequest {
                        serial: serial.clone(),
                    })
                    .await
                    .rpc()
                {
                    Ok(reply) => {
                        let rec: ClientCertRecord = decode(&reply.into_inner().json)?;
                        println!("{}", rec.serial);
                    }
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

/// Runs `join-token`.
pub async fn join_token(ctx: &mut Ctx, a: JoinTokenArgs) -> Result<i32> {
    let mut control = ctx.control().await?;
    let (role, daemon) = match a.role {
        TokenRole::Worker => ("worker", "flotilla-worker"),
        TokenRole::Manager => ("manager", "flotilla-manager"),
    };
    let reply = control
        .join_token(JoinTokenRequest {
            role: role.into(),
            rotate: a.rotate,
        })
        .await
        .rpc()?
        .into_inner();
    if a.quiet {
        println!("{}", reply.token);
        return Ok(0);
    }
    if a.rotate {
        println!("Successfully rotated {role} join token.\n");
    }
    let addr = reply
        .managers
        .first()
        .cloned()
        .unwrap_or_else(|| "MANAGER-ADDR".into());
    println!(
        "To add a {role} to this cluster, run the following command on it:\n\n    {daemon} join --token {} {addr}\n",
        reply.token
    );
    Ok(0)
}
