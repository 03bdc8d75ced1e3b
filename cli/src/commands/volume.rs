//! Volume verbs: create, ls, inspect (through `system::inspect`), rm, prune.

use super::container::{decode, print_prune};
use super::{each, Ctx};
use crate::client::RpcResult;
use crate::format::{self, OutputFormat};
use crate::parse;
use crate::{VolumeCreateArgs, VolumeGroup, VolumeLsArgs};
use agent_common::engine::{PruneReport, VolumeInfo};
use agent_common::proto::{CreateVolumeRequest, Empty, RemoveVolumeRequest};
use anyhow::{bail, Result};
use serde_json::{json, Value};

/// Runs a `volume` subcommand.
pub async fn run(ctx: &mut Ctx, v: VolumeGroup) -> Result<i32> {
    match v {
        VolumeGroup::Create(a) => create(ctx, a).await,
        VolumeGroup::Ls(a) => ls(ctx, a).await,
        VolumeGroup::Inspect(a) => {
            super::system::inspect(ctx, Some("volume"), a.format, a.targets).await
        }
        VolumeGroup::Rm(a) => {
            let engine = ctx.engine().await?;
            Ok(each(&a.volumes, |volume| {
                let mut e = engine.clone();
                async move {
                    e.remove_volume(RemoveVolumeRequest {
                        volume,
                        force: a.force,
                    })
                    .await
                    .rpc()?;
                    Ok(None)
                }
            })
            .await)
        }
        VolumeGroup::Prune(a) => {
            if !a.force
                && !super::confirm("WARNING! This will remove anonymous local volumes not used by at least one container.")?
            {
                return Ok(0);
            }
            let mut engine = ctx.engine().await?;
            let r = engine.prune_volumes(Empty {}).await.rpc()?.into_inner();
            let report: PruneReport = decode(&r.json)?;
            print_prune("Deleted Volumes:", &report);
            Ok(0)
        }
    }
}

async fn create(ctx: &mut Ctx, a: VolumeCreateArgs) -> Result<i32> {
    let name = match a.name.or(a.volume) {
        Some(n) => parse::volume_name(&n)?,
        None => String::new(),
    };
    if a.driver != "local" {
        bail!(
            "invalid volume driver {:?}: only \"local\" is supported",
            a.driver
        );
    }
    let labels = parse::labels(&a.labels)?;
    let mut engine = ctx.engine().await?;
    let r = engine
        .create_volume(CreateVolumeRequest {
            name,
            labels: labels.into_iter().collect(),
            driver: a.driver,
        })
        .await
        .rpc()?
        .into_inner();
    let info: VolumeInfo = decode(&r.json)?;
    println!("{}", info.name);
    Ok(0)
}

/// A `volume ls` row with Docker's field names.
pub fn volume_row(v: &VolumeInfo) -> Value {
    let labels: Vec<String> = v
        .labels
        .iter()
        .map(|(k, val)| format!("{k}={val}"))
        .collect();
    json!({
        "Driver": v.driver,
        "Name": v.name,
        "Mountpoint": v.mountpoint,
        "Scope": v.scope,
        "Labels": labels.join(","),
        "CreatedAt": v.created_at,
    })
}

async fn ls(ctx: &mut Ctx, a: VolumeLsArgs) -> Result<i32> {
    let format = OutputFormat::parse(a.format.as_deref());
    let mut engine = ctx.engine().await?;
    let r = engine.list_volumes(Empty {}).await.rpc()?.into_inner();
    let mut list: Vec<VolumeInfo> = decode(&r.json)?;
    list.sort_by(|x, y| x.name.cmp(&y.name));
    if a.quiet {
        for v in &list {
            println!("{}", v.name);
        }
        return Ok(0);
    }
    let rows: Vec<Value> = list.iter().map(volume_row).collect();
    let cells = |r: &Value| -> Vec<String> {
        ["Driver", "Name"]
            .iter()
            .map(|k| r[k].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let titles = |f: &str| match f {
        "Name" => "VOLUME NAME".to_string(),
        o => o.to_uppercase(),
    };
    print!(
        "{}",
        format::render_rows(&format, &rows, &["DRIVER", "VOLUME NAME"], &cells, &titles)?
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_rows_use_docker_field_names() {
        let v = VolumeInfo {
            name: "data".into(),
            driver: "local".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        let r = volume_row(&v);
        assert_eq!(r["Name"], "data");
        assert_eq!(r["Driver"], "local");
        assert_eq!(r["Labels"], "a=b");
    }
}
