//! Network verbs: create, ls, inspect, rm, connect, disconnect, prune. The
//! clap arguments live here too, so the command tree in `main.rs` only names
//! the group.

use super::container::{decode, print_prune};
use super::{each, Ctx};
use crate::client::RpcResult;
use crate::format::{self, OutputFormat};
use crate::parse;
use agent_common::engine::{NetworkInspect, PruneReport};
use agent_common::proto::{
    ConnectNetworkRequest, CreateNetworkRequest, DisconnectNetworkRequest, Empty, NetworkRef,
};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// `flotilla network …`.
#[derive(Subcommand, Debug)]
pub enum NetworkGroup {
    /// Create a user-defined bridge network (with its own subnet and embedded DNS).
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks.
    Inspect(InspectArgs),
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Connect a container to a network.
    Connect(ConnectArgs),
    /// Disconnect a container from a network.
    Disconnect(DisconnectArgs),
    /// Remove all user-defined networks not used by a running container.
    Prune(PruneArgs),
}

/// `network create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Driver (only "bridge").
    #[arg(short = 'd', long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR form (e.g. 10.88.5.0/24); a free /24 when not given.
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Gateway address (the bridge's) inside the subnet; the first address when not given.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// No route out of the network (and no masquerade).
    #[arg(long)]
    pub internal: bool,
    /// Set metadata on the network (KEY=VALUE).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Network name.
    pub name: String,
}

/// `network ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only display network IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Don't truncate IDs.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Output format: table, json, or a template such as '{{.Name}}'.
    #[arg(long)]
    pub format: Option<String>,
}

/// `network inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Format the output with a template (e.g. '{{.IPAM}}').
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    /// Names or IDs.
    #[arg(required = true)]
    pub networks: Vec<String>,
}

/// `network rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Networks (name or ID).
    #[arg(required = true)]
    pub networks: Vec<String>,
}

/// `network connect`.
#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// A network-scoped name of the container (repeatable).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// A fixed IPv4 address in the network's subnet.
    #[arg(long = "ip", value_name = "IP")]
    pub ip: Option<String>,
    /// Network (name or ID).
    pub network: String,
    /// Container (name or ID).
    pub container: String,
}

/// `network disconnect`.
#[derive(Args, Debug)]
pub struct DisconnectArgs {
    /// Accepted for Docker compatibility (disconnecting never needs it).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Network (name or ID).
    pub network: String,
    /// Container (name or ID).
    pub container: String,
}

/// `network prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Do not prompt for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Runs a `network` subcommand.
pub async fn run(ctx: &mut Ctx, n: NetworkGroup) -> Result<i32> {
    match n {
        NetworkGroup::Create(a) => create(ctx, a).await,
        NetworkGroup::Ls(a) => ls(ctx, a).await,
        NetworkGroup::Inspect(a) => inspect(ctx, a).await,
        NetworkGroup::Rm(a) => {
            let engine = ctx.engine().await?;
            Ok(each(&a.networks, |network| {
                let mut e = engine.clone();
                async move {
                    e.remove_network(NetworkRef { network }).await.rpc()?;
                    Ok(None)
                }
            })
            .await)
        }
        NetworkGroup::Connect(a) => {
            let mut engine = ctx.engine().await?;
            engine
                .connect_network(ConnectNetworkRequest {
                    network: a.network,
                    container: a.container,
                    aliases: a.aliases,
                    ipv4_address: a.ip.unwrap_or_default(),
                })
                .await
                .rpc()?;
            Ok(0)
        }
        NetworkGroup::Disconnect(a) => {
            let mut engine = ctx.engine().await?;
            engine
                .disconnect_network(DisconnectNetworkRequest {
                    network: a.network,
                    container: a.container,
                    force: a.force,
                })
                .await
                .rpc()?;
            Ok(0)
        }
        NetworkGroup::Prune(a) => {
            if !a.force
                && !super::confirm(
                    "WARNING! This will remove all custom networks not used by at least one container.",
                )?
            {
                return Ok(0);
            }
            let mut engine = ctx.engine().await?;
            let r = engine.prune_networks(Empty {}).await.rpc()?.into_inner();
            let report: PruneReport = decode(&r.json)?;
            if !report.deleted.is_empty() {
                print_prune("Deleted Networks:", &report);
            }
            Ok(0)
        }
    }
}

async fn create(ctx: &mut Ctx, a: CreateArgs) -> Result<i32> {
    if a.driver != "bridge" {
        bail!(
            "invalid network driver {:?}: only \"bridge\" is supported",
            a.driver
        );
    }
    let labels = parse::labels(&a.labels)?;
    let mut engine = ctx.engine().await?;
    let r = engine
        .create_network(CreateNetworkRequest {
            name: a.name,
            driver: a.driver,
            subnet: a.subnet.unwrap_or_default(),
            gateway: a.gateway.unwrap_or_default(),
            internal: a.internal,
            labels: labels.into_iter().collect(),
        })
        .await
        .rpc()?
        .into_inner();
    let net: NetworkInspect = decode(&r.json)?;
    println!("{}", net.id);
    Ok(0)
}

/// A `network ls` row with Docker's field names.
pub fn network_row(n: &NetworkInspect, no_trunc: bool) -> Value {
    let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    json!({
        "ID": if no_trunc { n.id.clone() } else { format::short_id(&n.id) },
        "Name": n.name,
        "Driver": n.driver,
        "Scope": n.scope,
        "Internal": n.internal.to_string(),
        "IPv6": n.enable_ipv6.to_string(),
        "Labels": labels.join(","),
        "CreatedAt": n.created,
    })
}

async fn ls(ctx: &mut Ctx, a: LsArgs) -> Result<i32> {
    let format = OutputFormat::parse(a.format.as_deref());
    let mut engine = ctx.engine().await?;
    let r = engine.list_networks(Empty {}).await.rpc()?.into_inner();
    let mut list: Vec<NetworkInspect> = decode(&r.json)?;
    list.sort_by(|x, y| x.name.cmp(&y.name));
    if a.quiet {
        for n in &list {
            let id = if a.no_trunc {
                n.id.clone()
            } else {
                format::short_id(&n.id)
            };
            println!("{id}");
        }
        return Ok(0);
    }
    let rows: Vec<Value> = list.iter().map(|n| network_row(n, a.no_trunc)).collect();
    let cells = |r: &Value| -> Vec<String> {
        ["ID", "Name", "Driver", "Scope"]
            .iter()
            .map(|k| r[k].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let titles = |f: &str| match f {
        "ID" => "NETWORK ID".to_string(),
        o => o.to_uppercase(),
    };
    print!(
        "{}",
        format::render_rows(
            &format,
            &rows,
            &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
            &cells,
            &titles
        )?
    );
    Ok(0)
}

async fn inspect(ctx: &mut Ctx, a: InspectArgs) -> Result<i32> {
    let mut engine = ctx.engine().await?;
    let mut found = Vec::new();
    let mut code = 0;
    for n in &a.networks {
        match engine
            .inspect_network(NetworkRef { network: n.clone() })
            .await
            .rpc()
        {
            Ok(r) => found.push(decode::<Value>(&r.into_inner().json)?),
            Err(e) => {
                eprintln!("Error: {e:#}");
                code = 1;
            }
        }
    }
    match a.format {
        Some(t) => {
            for v in &found {
                println!("{}", format::render_template(&t, v)?);
            }
        }
        None => println!("{}", format::pretty_json(&Value::Array(found))),
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_use_docker_field_names() {
        let n = NetworkInspect {
            name: "front".into(),
            id: "0123456789abcdef0123".into(),
            driver: "bridge".into(),
            scope: "local".into(),
            ..Default::default()
        };
        let r = network_row(&n, false);
        assert_eq!(r["ID"], "0123456789ab");
        assert_eq!(r["Name"], "front");
        assert_eq!(r["Driver"], "bridge");
        assert_eq!(network_row(&n, true)["ID"], "0123456789abcdef0123");
    }
}
