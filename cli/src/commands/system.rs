//! System verbs: `version`, `info`, and the generic `inspect` that looks a
//! name up as a container, then an image, then a volume (or one `--type`).

use super::container::decode;
use super::Ctx;
use crate::client::{rpc_code, RpcResult};
use crate::format;
use agent_common::engine::{ContainerSummary, ImageSummary};
use agent_common::proto::{
    ContainerRef, Empty, ImageRef, ListContainersRequest, ListImagesRequest, VolumeRef,
};
use anyhow::{anyhow, Result};
use serde_json::Value;

/// Looks up one object by kind; Ok(None) when the daemon says it does not exist.
async fn inspect_one(ctx: &mut Ctx, kind: &str, target: &str) -> Result<Option<Value>> {
    let mut engine = ctx.engine().await?;
    let reply = match kind {
        "container" => engine
            .inspect_container(ContainerRef {
                container: target.to_string(),
            })
            .await
            .rpc(),
        "image" => engine
            .inspect_image(ImageRef {
                image: target.to_string(),
            })
            .await
            .rpc(),
        _ => engine
            .inspect_volume(VolumeRef {
                volume: target.to_string(),
            })
            .await
            .rpc(),
    };
    match reply {
        Ok(r) => Ok(Some(decode(&r.into_inner().json)?)),
        Err(e) if rpc_code(&e) == Some(tonic::Code::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `inspect`: prints a JSON array of the objects found (or each rendered by
/// `-f TEMPLATE`); `Error: No such object: X` for each one missing, exit 1.
pub async fn inspect(
    ctx: &mut Ctx,
    kind: Option<&str>,
    template: Option<String>,
    targets: Vec<String>,
) -> Result<i32> {
    let kinds: Vec<&str> = match kind {
        Some(k) => vec![k],
        None => vec!["container", "image", "volume"],
    };
    let mut found = Vec::new();
    let mut code = 0;
    for t in &targets {
        let mut hit = None;
        for k in &kinds {
            if let Some(v) = inspect_one(ctx, k, t).await? {
                hit = Some(v);
                break;
            }
        }
        match hit {
            Some(v) => found.push(v),
            None => {
                let what = match kind {
                    Some("container") => "container",
                    Some("image") => "image",
                    Some("volume") => "volume",
                    _ => "object",
                };
                eprintln!("Error: No such {what}: {t}");
                code = 1;
            }
        }
    }
    match template {
        Some(t) => {
            for v in &found {
                println!("{}", format::render_template(&t, v)?);
            }
        }
        None => println!("{}", format::pretty_json(&Value::Array(found))),
    }
    Ok(code)
}

/// `version`: the client's, then the daemon's.
pub async fn version(ctx: &mut Ctx) -> Result<i32> {
    println!("Client:");
    println!(" Version:           {}", env!("CARGO_PKG_VERSION"));
    println!(" API version:       {}", agent_common::ENGINE_API_VERSION);
    println!(
        " OS/Arch:           {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!();
    let mut engine = ctx.engine().await?;
    let v = engine.version(Empty {}).await.rpc()?.into_inner();
    println!("Server:");
    println!(" Engine:");
    println!("  Version:          {}", v.version);
    println!("  API version:      {}", v.api_version);
    println!("  Cgroup driver:    {}", v.cgroup_driver);
    println!("  Data root:        {}", v.data_root);
    for w in &v.warnings {
        eprintln!("WARNING: {w}");
    }
    Ok(0)
}

/// `info`: counts of containers by state and of images, and the daemon's settings.
pub async fn info(ctx: &mut Ctx) -> Result<i32> {
    let mut engine = ctx.engine().await?;
    let v = engine.version(Empty {}).await.rpc()?.into_inner();
    let containers: Vec<ContainerSummary> = decode(
        &engine
            .list_containers(ListContainersRequest { all: true })
            .await
            .rpc()?
            .into_inner()
            .json,
    )?;
    let images: Vec<ImageSummary> = decode(
        &engine
            .list_images(ListImagesRequest { all: false })
            .await
            .rpc()?
            .into_inner()
            .json,
    )?;
    let count = |state: &str| containers.iter().filter(|c| c.state == state).count();
    let mut ids: Vec<&str> = images.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    println!("Containers: {}", containers.len());
    println!(" Running: {}", count("running"));
    println!(" Paused: {}", count("paused"));
    println!(
        " Stopped: {}",
        containers.len() - count("running") - count("paused")
    );
    println!("Images: {}", ids.len());
    println!("Server Version: {}", v.version);
    println!("API Version: {}", v.api_version);
    println!("Cgroup Driver: {}", v.cgroup_driver);
    println!("Flotilla Root Dir: {}", v.data_root);
    println!("Operating System: {}", std::env::consts::OS);
    println!("Architecture: {}", std::env::consts::ARCH);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("CPUs: {cpus}");
    for w in &v.warnings {
        eprintln!("WARNING: {w}");
    }
    if v.version.is_empty() {
        return Err(anyhow!("the daemon did not report its version"));
    }
    Ok(0)
}
