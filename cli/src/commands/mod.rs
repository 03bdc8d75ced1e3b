//! Command handlers: one file per object kind (containers, images, volumes,
//! system). Each handler validates its flags, calls the engine, prints, and
//! returns the process exit code; errors go back to `main` to be printed.
//! This file holds the shared context (the connection, made on first use)
//! and the dispatch from the clap tree.

pub mod cluster;
pub mod container;
pub mod image;
pub mod network;
pub mod service;
pub mod system;
pub mod volume;

use crate::client::{self, Engine};
use crate::{Command, ContainerGroup, ImageGroup};
use anyhow::Result;
use std::future::Future;
use std::path::PathBuf;

/// What every command may need: where the daemon is and where credentials live.
pub struct Ctx {
    host: String,
    config_dir: Option<PathBuf>,
    engine: Option<Engine>,
    control: Option<client::Control>,
    tls: client::TlsFiles,
}

impl Ctx {
    /// A context for `host`; nothing is dialled until a command needs it.
    pub fn new(host: String, config_dir: Option<PathBuf>) -> Ctx {
        Ctx {
            host,
            config_dir,
            engine: None,
            control: None,
            tls: client::TlsFiles::default(),
        }
    }

    /// Uses these certificate files for `-H tcp://…`.
    pub fn with_tls(mut self, tls: client::TlsFiles) -> Ctx {
        self.tls = tls;
        self
    }

    fn tls_files(&self) -> client::TlsFiles {
        let dir = self
            .config_path()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()));
        let pick = |given: &Option<PathBuf>, name: &str| {
            given.clone().or_else(|| dir.as_ref().map(|d| d.join(name)))
        };
        client::TlsFiles {
            ca: pick(&self.tls.ca, "ca.pem"),
            cert: pick(&self.tls.cert, "cert.pem"),
            key: pick(&self.tls.key, "key.pem"),
        }
    }

    /// The engine client, connecting on first use.
    pub async fn engine(&mut self) -> Result<Engine> {
        if let Some(e) = &self.engine {
            return Ok(e.clone());
        }
        let e = client::connect(&self.host, &self.tls_files()).await?;
        self.engine = Some(e.clone());
        Ok(e)
    }

    /// The cluster control client, connecting on first use.
    pub async fn control(&mut self) -> Result<client::Control> {
        if let Some(c) = &self.control {
            return Ok(c.clone());
        }
        let c = client::connect_control(&self.host, &self.tls_files()).await?;
        self.control = Some(c.clone());
        Ok(c)
    }

    /// The credentials file.
    pub fn config_path(&self) -> Result<PathBuf> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        crate::config::config_path(self.config_dir.as_deref(), home.as_deref())
    }
}

/// Applies `op` to each target in order, printing each target that succeeded
/// and `Error: …` for each that failed, like Docker's multi-target verbs.
/// Returns 0 when all succeeded, 1 otherwise.
pub async fn each<F, Fut>(targets: &[String], mut op: F) -> i32
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Option<String>>>,
{
    let mut code = 0;
    for t in targets {
        match op(t.clone()).await {
            Ok(Some(line)) => println!("{line}"),
            Ok(None) => println!("{t}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                code = 1;
            }
        }
    }
    code
}

/// Asks "Are you sure you want to continue? [y/N]" after `warning`; true on yes.
pub fn confirm(warning: &str) -> Result<bool> {
    eprintln!("{warning}");
    let answer = crate::tty::prompt("Are you sure you want to continue? [y/N] ", true)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// Runs one parsed command.
pub async fn dispatch(mut ctx: Ctx, command: Command) -> Result<i32> {
    match command {
        Command::Container(v) | Command::ContainerGroup(ContainerGroup::Verb(v)) => {
            container::verb(&mut ctx, v).await
        }
        Command::Ps(a) | Command::ContainerGroup(ContainerGroup::Ls(a)) => {
            container::ps(&mut ctx, a).await
        }
        Command::ContainerGroup(ContainerGroup::Inspect(a)) => {
            system::inspect(&mut ctx, Some("container"), a.format, a.targets).await
        }
        Command::ContainerGroup(ContainerGroup::Prune(a)) => container::prune(&mut ctx, a).await,
        Command::Image(v) | Command::ImageGroup(ImageGroup::Verb(v)) => {
            image::verb(&mut ctx, v).await
        }
        Command::Images(a) | Command::ImageGroup(ImageGroup::Ls(a)) => {
            image::images(&mut ctx, a).await
        }
        Command::Rmi(a) | Command::ImageGroup(ImageGroup::Rm(a)) => image::rmi(&mut ctx, a).await,
        Command::ImageGroup(ImageGroup::Inspect(a)) => {
            system::inspect(&mut ctx, Some("image"), a.format, a.targets).await
        }
        Command::ImageGroup(ImageGroup::Prune(a)) => image::prune(&mut ctx, a).await,
        Command::Volume(v) => volume::run(&mut ctx, v).await,
        Command::Network(n) => network::run(&mut ctx, n).await,
        Command::Inspect(a) => {
            system::inspect(&mut ctx, a.kind.as_deref(), a.format, a.targets).await
        }
        Command::Version => system::version(&mut ctx).await,
        Command::Info => system::info(&mut ctx).await,
        Command::Node(g) => cluster::node(&mut ctx, g).await,
        Command::Cluster(g) => cluster::cluster(&mut ctx, g).await,
        Command::JoinToken(a) => cluster::join_token(&mut ctx, a).await,
        Command::Service(g) => service::run(&mut ctx, g).await,
    }
}
