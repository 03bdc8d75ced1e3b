//! Image verbs: images, tag, rmi, prune, history, load, save, import, pull,
//! push (progress bars per layer on a terminal, plain status lines otherwise),
//! login and logout (credentials through `config`).

use super::container::{copy_chunks, decode, print_prune};
use super::Ctx;
use crate::client::RpcResult;
use crate::config::ConfigFile;
use crate::format::{self, OutputFormat};
use crate::parse;
use crate::{
    HistoryArgs, ImagePruneArgs, ImageVerb, ImagesArgs, ImportArgs, LoadArgs, LoginArgs,
    LogoutArgs, PullArgs, RegistryArgs, RmiArgs, SaveArgs, TagArgs,
};
use agent_common::engine::{HistoryEntry, ImageSummary, PruneReport};
use agent_common::proto::{
    import_input, DataChunk, ImageRef, ImportInput, ImportStart, ListImagesRequest, Progress,
    PruneImagesRequest, PullRequest, PushRequest, RegistryAuth, RegistryLoginRequest,
    RegistryOptions, RemoveImageRequest, SaveRequest, TagRequest,
};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CHUNK: usize = 1024 * 1024;

/// Runs an image verb.
pub async fn verb(ctx: &mut Ctx, v: ImageVerb) -> Result<i32> {
    match v {
        ImageVerb::Tag(a) => tag(ctx, a).await,
        ImageVerb::History(a) => history(ctx, a).await,
        ImageVerb::Load(a) => load(ctx, a).await,
        ImageVerb::Save(a) => save(ctx, a).await,
        ImageVerb::Import(a) => import(ctx, a).await,
        ImageVerb::Pull(a) => {
            pull_image(ctx, &a.image, &a.registry, a.quiet, false).await?;
            if a.quiet {
                println!("{}", a.image);
            }
            Ok(0)
        }
        ImageVerb::Push(a) => push(ctx, a).await,
        ImageVerb::Login(a) => login(ctx, a).await,
        ImageVerb::Logout(a) => logout(ctx, a),
    }
}

fn registry_options(r: &RegistryArgs) -> Result<RegistryOptions> {
    let ca_file = match &r.registry_ca {
        Some(p) => {
            let abs = std::fs::canonicalize(p)
                .with_context(|| format!("cannot read --registry-ca {}", p.display()))?;
            abs.to_string_lossy().into_owned()
        }
        None => String::new(),
    };
    Ok(RegistryOptions {
        insecure_registries: r.insecure_registry.clone(),
        ca_file,
    })
}

/// The stored credentials for the registry of `image`, if any.
fn auth_for(ctx: &Ctx, image: &str) -> Result<Option<RegistryAuth>> {
    let Some(registry) = parse::registry_of(image) else {
        return Ok(None);
    };
    let cfg = ConfigFile::load(&ctx.config_path()?)?;
    Ok(cfg.get(&registry)?.map(|c| RegistryAuth {
        username: c.username,
        password: c.password,
        identity_token: c.identity_token,
    }))
}

/// An `images` row with Docker's `--format` field names.
pub fn image_row(i: &ImageSummary, no_trunc: bool, now: i64) -> Value {
    let none = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    json!({
        "ID": if no_trunc { i.id.clone() } else { format::short_id(&i.id) },
        "Repository": none(&i.repository),
        "Tag": none(&i.tag),
        "CreatedSince": format::ago(i.created, now),
        "CreatedAt": format::docker_time(i.created),
        "Size": format::human_size(i.size),
    })
}

fn image_title(field: &str) -> String {
    match field {
        "ID" => "IMAGE ID".into(),
        "CreatedSince" => "CREATED".into(),
        "CreatedAt" => "CREATED AT".into(),
        other => other.to_uppercase(),
    }
}

/// Whether an image matches an `images REPOSITORY[:TAG]` argument.
fn image_matches(i: &ImageSummary, reference: &str) -> bool {
    let last_slash = reference.rfind('/').map_or(0, |p| p + 1);
    match reference[last_slash..].rfind(':') {
        Some(p) => {
            let (repo, tag) = reference.split_at(last_slash + p);
            i.repository == repo && i.tag == tag[1..]
        }
        None => i.repository == reference,
    }
}

/// `images`.
pub async fn images(ctx: &mut Ctx, a: ImagesArgs) -> Result<i32> {
    let format = OutputFormat::parse(a.format.as_deref());
    let mut engine = ctx.engine().await?;
    let r = engine
        .list_images(ListImagesRequest { all: a.all })
        .await
        .rpc()?
        .into_inner();
    let mut list: Vec<ImageSummary> = decode(&r.json)?;
    if let Some(reference) = &a.reference {
        list.retain(|i| image_matches(i, reference));
    }
    list.sort_by(|x, y| {
        y.created
            .cmp(&x.created)
            .then(x.repository.cmp(&y.repository))
    });
    let now = format::now_unix();
    let rows: Vec<Value> = list.iter().map(|i| image_row(i, a.no_trunc, now)).collect();
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            let id = r["ID"].as_str().unwrap_or_default();
            if seen.insert(id.to_string()) {
                println!("{id}");
            }
        }
        return Ok(0);
    }
    let cells = |r: &Value| -> Vec<String> {
        ["Repository", "Tag", "ID", "CreatedSince", "Size"]
            .iter()
            .map(|k| r[k].as_str().unwrap_or_default().to_string())
            .collect()
    };
    print!(
        "{}",
        format::render_rows(
            &format,
            &rows,
            &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
            &cells,
            &image_title,
        )?
    );
    Ok(0)
}

async fn tag(ctx: &mut Ctx, a: TagArgs) -> Result<i32> {
    let mut engine = ctx.engine().await?;
    engine
        .tag_image(TagRequest {
            source: a.source,
            target: a.target,
        })
        .await
        .rpc()?;
    Ok(0)
}

/// Prints what `rmi` did: Docker's `Untagged: …` / `Deleted: …` lines from
/// the reply (a list of objects keyed by action).
fn print_removal(json: &str) -> Result<()> {
    let v: Value = decode(json)?;
    let items = match v {
        Value::Array(items) => items,
        other => vec![other],
    };
    for item in items {
        match item {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) => println!("{k}: {s}"),
                        Value::Array(list) => {
                            for s in list {
                                println!(
                                    "{k}: {}",
                                    s.as_str().map_or(s.to_string(), str::to_string)
                                );
                            }
                        }
                        other => println!("{k}: {other}"),
                    }
                }
            }
            Value::String(s) => println!("{s}"),
            _ => {}
        }
    }
    Ok(())
}

/// `rmi`.
pub async fn rmi(ctx: &mut Ctx, a: RmiArgs) -> Result<i32> {
    let mut engine = ctx.engine().await?;
    let mut code = 0;
    for image in a.images {
        match engine
            .remove_image(RemoveImageRequest {
                image,
                force: a.force,
            })
            .await
            .rpc()
        {
            Ok(r) => print_removal(&r.into_inner().json)?,
            Err(e) => {
                eprintln!("Error: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// `image prune`.
pub async fn prune(ctx: &mut Ctx, a: ImagePruneArgs) -> Result<i32> {
    let warning = if a.all {
        "WARNING! This will remove all images without at least one container associated to them."
    } else {
        "WARNING! This will remove all dangling images."
    };
    if !a.force && !super::confirm(warning)? {
        return Ok(0);
    }
    let mut engine = ctx.engine().await?;
    let r = engine
        .prune_images(PruneImagesRequest { all: a.all })
        .await
        .rpc()?
        .into_inner();
    let report: PruneReport = decode(&r.json)?;
    print_prune("Deleted Images:", &report);
    Ok(0)
}

/// A history row with Docker's field names.
pub fn history_row(h: &HistoryEntry, no_trunc: bool, now: i64) -> Value {
    let id = if h.id.is_empty() || h.id == "<missing>" {
        "<missing>".to_string()
    } else if no_trunc {
        h.id.clone()
    } else {
        format::short_id(&h.id)
    };
    let created_by = if no_trunc {
        h.created_by.clone()
    } else {
        format::ellipsis(&h.created_by, 45)
    };
    json!({
        "ID": id,
        "CreatedSince": format::ago(h.created, now),
        "CreatedAt": format::docker_time(h.created),
        "CreatedBy": created_by,
        "Size": format::human_size(h.size),
        "Comment": h.comment,
    })
}

async fn history(ctx: &mut Ctx, a: HistoryArgs) -> Result<i32> {
    let format = OutputFormat::parse(a.format.as_deref());
    let mut engine = ctx.engine().await?;
    let r = engine
        .image_history(ImageRef { image: a.image })
        .await
        .rpc()?
        .into_inner();
    let list: Vec<HistoryEntry> = decode(&r.json)?;
    let now = format::now_unix();
    let rows: Vec<Value> = list
        .iter()
        .map(|h| history_row(h, a.no_trunc, now))
        .collect();
    if a.quiet {
        for r in &rows {
            println!("{}", r["ID"].as_str().unwrap_or_default());
        }
        return Ok(0);
    }
    let cells = |r: &Value| -> Vec<String> {
        ["ID", "CreatedSince", "CreatedBy", "Size", "Comment"]
            .iter()
            .map(|k| r[k].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let titles = |f: &str| match f {
        "ID" => "IMAGE".to_string(),
        "CreatedSince" => "CREATED".to_string(),
        "CreatedBy" => "CREATED BY".to_string(),
        o => o.to_uppercase(),
    };
    print!(
        "{}",
        format::render_rows(
            &format,
            &rows,
            &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
            &cells,
            &titles,
        )?
    );
    Ok(0)
}

/// Reads `input` (a file, or stdin) in chunks on a blocking thread and sends
/// each chunk as `wrap(bytes)`; an error while reading is sent back on `err`.
fn spawn_reader<T: Send + 'static>(
    input: Option<std::path::PathBuf>,
    tx: mpsc::Sender<T>,
    wrap: fn(Vec<u8>) -> T,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::task::spawn_blocking(move || {
        let mut reader: Box<dyn Read> = match &input {
            Some(p) => Box::new(
                std::fs::File::open(p)
                    .with_context(|| format!("failed to open {}", p.display()))?,
            ),
            None => Box::new(std::io::stdin()),
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).context("failed to read the input")?;
            if n == 0 {
                return Ok(());
            }
            if tx.blocking_send(wrap(buf[..n].to_vec())).is_err() {
                return Ok(());
            }
        }
    })
}

async fn load(ctx: &mut Ctx, a: LoadArgs) -> Result<i32> {
    if a.input.is_none() && std::io::stdin().is_terminal() {
        bail!(
            "requested load from stdin, but stdin is a terminal: use -i FILE or pipe an archive in"
        );
    }
    if let Some(p) = &a.input {
        std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
    }
    let mut engine = ctx.engine().await?;
    let (tx, rx) = mpsc::channel(4);
    let reader = spawn_reader(a.input.clone(), tx, |data| DataChunk { data });
    let stream = engine
        .load_images(ReceiverStream::new(rx))
        .await
        .rpc()?
        .into_inner();
    let shown = show_progress(stream, a.quiet, false).await;
    let read = reader.await.map_err(|e| anyhow!("reader failed: {e}"))?;
    read?;
    shown?;
    Ok(0)
}

async fn save(ctx: &mut Ctx, a: SaveArgs) -> Result<i32> {
    if a.output.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write a tar archive to a terminal: use -o FILE or redirect stdout");
    }
    let mut engine = ctx.engine().await?;
    let stream = engine
        .save_images(SaveRequest { images: a.images })
        .await
        .rpc()?
        .into_inner();
    copy_chunks(stream, a.output.as_deref()).await?;
    Ok(0)
}

async fn import(ctx: &mut Ctx, a: ImportArgs) -> Result<i32> {
    if a.file.starts_with("http://") || a.file.starts_with("https://") {
        bail!("importing from a URL is not supported: download the file and import it from disk");
    }
    let input = (a.file != "-").then(|| std::path::PathBuf::from(&a.file));
    match &input {
        Some(p) => {
            std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        }
        None if std::io::stdin().is_terminal() => {
            bail!("requested import from stdin, but stdin is a terminal: pipe a tarball in");
        }
        None => {}
    }
    let mut engine = ctx.engine().await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(ImportInput {
        kind: Some(import_input::Kind::Start(ImportStart {
            reference: a.reference.unwrap_or_default(),
            changes: a.change,
            message: a.message.unwrap_or_default(),
        })),
    })
    .await
    .map_err(|_| anyhow!("import stream closed"))?;
    let reader = spawn_reader(input, tx, |data| ImportInput {
        kind: Some(import_input::Kind::Data(data)),
    });
    let reply = engine.import_image(ReceiverStream::new(rx)).await.rpc();
    let read = reader.await.map_err(|e| anyhow!("reader failed: {e}"))?;
    read?;
    println!("{}", reply?.into_inner().id);
    Ok(0)
}

/// Pulls `image`, showing progress (on stderr when `to_stderr`, as `run` does).
pub async fn pull_image(
    ctx: &mut Ctx,
    image: &str,
    registry: &RegistryArgs,
    quiet: bool,
    to_stderr: bool,
) -> Result<()> {
    let auth = auth_for(ctx, image)?;
    let options = registry_options(registry)?;
    let mut engine = ctx.engine().await?;
    let stream = engine
        .pull_image(PullRequest {
            image: image.to_string(),
            auth,
            options: Some(options),
        })
        .await
        .rpc()?
        .into_inner();
    show_progress(stream, quiet, to_stderr).await
}

async fn push(ctx: &mut Ctx, a: PullArgs) -> Result<i32> {
    let auth = auth_for(ctx, &a.image)?;
    let options = registry_options(&a.registry)?;
    let mut engine = ctx.engine().await?;
    let stream = engine
        .push_image(PushRequest {
            image: a.image,
            auth,
            options: Some(options),
        })
        .await
        .rpc()?
        .into_inner();
    show_progress(stream, a.quiet, false).await?;
    Ok(0)
}

/// One line of plain progress output: `id: status`, or the status alone.
pub fn progress_line(p: &Progress) -> String {
    if p.id.is_empty() {
        p.status.clone()
    } else {
        format!("{}: {}", p.id, p.status)
    }
}

/// Renders a `Progress` stream: a bar per layer on a terminal, otherwise one
/// line per change of status (byte counts alone are not repeated).
pub async fn show_progress(
    mut stream: tonic::Streaming<Progress>,
    quiet: bool,
    to_stderr: bool,
) -> Result<()> {
    let is_tty = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let multi = MultiProgress::with_draw_target(if quiet || !is_tty {
        ProgressDrawTarget::hidden()
    } else if to_stderr {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::stdout()
    });
    let style =
        ProgressStyle::with_template("{prefix}: {msg:<12} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let plain = ProgressStyle::with_template("{prefix}: {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut last_status: HashMap<String, String> = HashMap::new();
    let say = |line: &str| {
        if quiet {
            return;
        }
        if is_tty {
            let _ = multi.println(line);
        } else if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    while let Some(p) = stream.message().await.rpc()? {
        if !p.error.is_empty() {
            for b in bars.values() {
                b.abandon();
            }
            bail!("{}", p.error);
        }
        if p.id.is_empty() {
            say(&p.status);
            continue;
        }
        if is_tty && !quiet {
            let bar = bars.entry(p.id.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(0));
                b.set_style(plain.clone());
                b.set_prefix(p.id.clone());
                b
            });
            if p.total > 0 {
                bar.set_style(style.clone());
                bar.set_length(p.total);
                bar.set_position(p.current.min(p.total));
            }
            bar.set_message(p.status.clone());
            if p.total == 0 && p.current == 0 {
                bar.set_style(plain.clone());
            }
        } else if last_status.get(&p.id) != Some(&p.status) {
            last_status.insert(p.id.clone(), p.status.clone());
            say(&progress_line(&p));
        }
    }
    for b in bars.values() {
        b.finish();
    }
    Ok(())
}

async fn login(ctx: &mut Ctx, a: LoginArgs) -> Result<i32> {
    let registry = a
        .server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    if registry.is_empty() {
        bail!("the registry is empty: use flotilla login HOST[:PORT]");
    }
    let path = ctx.config_path()?;
    let mut cfg = ConfigFile::load(&path)?;
    let stored = cfg.get(&registry).ok().flatten();
    let username = match a.username {
        Some(u) => u,
        None => {
            let default = stored
                .as_ref()
                .map(|c| c.username.clone())
                .unwrap_or_default();
            let shown = if default.is_empty() {
                "Username: ".to_string()
            } else {
                format!("Username ({default}): ")
            };
            let u = crate::tty::prompt(&shown, true)?;
            if u.is_empty() {
                default
            } else {
                u
            }
        }
    };
    if username.is_empty() {
        bail!("the username is empty: use -u USER");
    }
    let password = if a.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("failed to read the password from stdin")?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = a.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p
    } else {
        crate::tty::prompt("Password: ", false)?
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let options = registry_options(&a.registry)?;
    let mut engine = ctx.engine().await?;
    engine
        .check_registry_login(RegistryLoginRequest {
            registry: registry.clone(),
            auth: Some(RegistryAuth {
                username: username.clone(),
                password: password.clone(),
                identity_token: String::new(),
            }),
            options: Some(options),
        })
        .await
        .rpc()?;
    cfg.set(&registry, &username, &password);
    cfg.save(&path)?;
    println!("Login Succeeded");
    Ok(0)
}

fn logout(ctx: &mut Ctx, a: LogoutArgs) -> Result<i32> {
    let registry = a
        .server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let path = ctx.config_path()?;
    let mut cfg = ConfigFile::load(&path)?;
    if cfg.remove(&registry) {
        cfg.save(&path)?;
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(repo: &str, tag: &str) -> ImageSummary {
        ImageSummary {
            id: "sha256:0123456789abcdef".into(),
            repository: repo.into(),
            tag: tag.into(),
            created: 0,
            size: 4_260_000,
        }
    }

    #[test]
    fn image_rows() {
        let r = image_row(&img("busybox", "latest"), false, 150);
        assert_eq!(r["ID"], "0123456789ab");
        assert_eq!(r["CreatedSince"], "2 minutes ago");
        assert_eq!(r["Size"], "4.26MB");
        let r = image_row(&img("", ""), true, 0);
        assert_eq!(
            (r["Repository"].as_str(), r["Tag"].as_str()),
            (Some("<none>"), Some("<none>"))
        );
        assert_eq!(r["ID"], "sha256:0123456789abcdef");
    }

    #[test]
    fn image_reference_filter() {
        assert!(image_matches(&img("busybox", "latest"), "busybox"));
        assert!(image_matches(&img("busybox", "1.36"), "busybox:1.36"));
        assert!(!image_matches(&img("busybox", "latest"), "busybox:1.36"));
        assert!(image_matches(
            &img("127.0.0.1:5000/app", "v1"),
            "127.0.0.1:5000/app:v1"
        ));
        assert!(image_matches(
            &img("127.0.0.1:5000/app", "v1"),
            "127.0.0.1:5000/app"
        ));
        assert!(!image_matches(&img("alpine", "latest"), "busybox"));
    }

    #[test]
    fn history_rows() {
        let h = HistoryEntry {
            id: String::new(),
            created: 0,
            created_by: "/bin/sh -c #(nop) ADD file:0123456789abcdef in / ".into(),
            size: 0,
            comment: String::new(),
            empty_layer: false,
        };
        let r = history_row(&h, false, 0);
        assert_eq!(r["ID"], "<missing>");
        assert_eq!(r["CreatedBy"].as_str().unwrap().chars().count(), 45);
        assert_eq!(r["Size"], "0B");
    }

    #[test]
    fn progress_lines() {
        let p = Progress {
            id: "abc".into(),
            status: "Pull complete".into(),
            ..Default::default()
        };
        assert_eq!(progress_line(&p), "abc: Pull complete");
        let p = Progress {
            status: "Status: Downloaded".into(),
            ..Default::default()
        };
        assert_eq!(progress_line(&p), "Status: Downloaded");
    }

    #[test]
    fn registry_options_resolve_the_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let o = registry_options(&RegistryArgs {
            insecure_registry: vec!["127.0.0.1:5000".into()],
            registry_ca: Some(ca.clone()),
        })
        .unwrap();
        assert_eq!(o.insecure_registries, vec!["127.0.0.1:5000"]);
        assert_eq!(
            o.ca_file,
            std::fs::canonicalize(&ca).unwrap().to_string_lossy()
        );
        assert!(registry_options(&RegistryArgs {
            insecure_registry: vec![],
            registry_ca: Some(dir.path().join("missing.pem")),
        })
        .is_err());
    }
}
