//! `pull`, `push`, `login` against a real registry (Debian's `docker-registry`
//! on 127.0.0.1): round trips between daemons, images made by other tools
//! (umoci + skopeo, gzip and zstd layers, an index with an arm64 decoy),
//! HTTPS with a CA file, Basic auth, and refusals that leave nothing behind.

use std::path::Path;
use std::process::Command;

use cluster_tests::registry_server::{RegistryOptions, RegistryServer};
use cluster_tests::{busybox_image, busybox_rootfs_tar, Daemon};

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn image_tmp_is_empty(d: &Daemon) -> bool {
    std::fs::read_dir(d.data_root().join("image/tmp"))
        .map(|mut it| it.next().is_none())
        .unwrap_or(true)
}

#[test]
fn push_rmi_pull_run_and_a_second_daemon_pulls_it() {
    let reg = RegistryServer::start(RegistryOptions::default());
    let d = Daemon::start();
    let img = busybox_image(&d, "rt");
    let remote = format!("{}/team/busybox:v1", reg.host);
    let insecure = ["--insecure-registry", reg.host.as_str()];
    d.ok(&["tag", &img, &remote]);
    let pushed = d.ok(&["push", insecure[0], insecure[1], &remote]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    d.ok(&["rmi", &remote]);
    d.ok(&["rmi", &img]);
    assert!(d.ok(&["images", "-q"]).trim().is_empty());
    let pulled = d.ok(&["pull", insecure[0], insecure[1], &remote]);
    assert!(pulled.contains("Download complete"), "{pulled}");
    assert_eq!(
        d.ok(&["run", "--rm", &remote, "echo", "from-the-registry"])
            .trim(),
        "from-the-registry"
    );

    let other = Daemon::start();
    let (code, out, err) = other.run3(&[
        "run",
        "--rm",
        "--insecure-registry",
        &reg.host,
        &remote,
        "echo",
        "second",
    ]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "second");
    assert!(
        err.contains("Unable to find image"),
        "run pulls a missing image: {err}"
    );
    // The same layer again is not downloaded twice.
    let again = other.ok(&["pull", insecure[0], insecure[1], &remote]);
    assert!(!again.contains("Download complete"), "{again}");
}

#[test]
fn a_missing_tag_is_a_clear_error_and_leaves_nothing() {
    let reg = RegistryServer::start(RegistryOptions::default());
    let d = Daemon::start();
    let remote = format!("{}/nobody/here:v9", reg.host);
    let err = d.fails(&["pull", "--insecure-registry", &reg.host, &remote], 1);
    assert!(
        err.contains("No such image") && err.contains("nobody/here"),
        "{err}"
    );
    let err = d.fails(
        &[
            "run",
            "--rm",
            "--insecure-registry",
            &reg.host,
            &remote,
            "true",
        ],
        125,
    );
    assert!(err.contains("nobody/here"), "{err}");
    assert!(d.ok(&["images", "-q"]).trim().is_empty());
    assert!(d.ok(&["ps", "-aq"]).trim().is_empty());
    assert!(image_tmp_is_empty(&d));
}

#[test]
fn plain_http_needs_the_insecure_flag() {
    let reg = RegistryServer::start(RegistryOptions::default());
    let d = Daemon::start();
    let err = d.fails(&["pull", &format!("{}/x/y:z", reg.host)], 1);
    assert!(err.contains("--insecure-registry"), "{err}");
    let err = d.fails(&["pull", "busybox"], 1);
    assert!(err.contains("no registry"), "{err}");
}

#[test]
fn https_registry_with_its_ca_file() {
    let reg = RegistryServer::start(RegistryOptions {
        tls: true,
        ..Default::default()
    });
    let ca = reg.ca_file.clone().expect("a CA");
    let d = Daemon::start();
    let img = busybox_image(&d, "tls");
    let remote = format!("{}/tls/busybox:v1", reg.host);
    d.ok(&["tag", &img, &remote]);
    // Without the CA the server certificate is not trusted.
    let err = d.fails(&["push", &remote], 1);
    assert!(err.contains(&reg.host), "{err}");
    d.ok(&["push", "--registry-ca", ca.to_str().unwrap(), &remote]);
    d.ok(&["rmi", &remote]);
    d.ok(&["pull", "--registry-ca", ca.to_str().unwrap(), &remote]);
    assert_eq!(
        d.ok(&["run", "--rm", &remote, "echo", "tls-ok"]).trim(),
        "tls-ok"
    );
}

#[test]
fn basic_auth_login_push_pull_logout() {
    let reg = RegistryServer::start(RegistryOptions {
        htpasswd: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    });
    let d = Daemon::start();
    let img = busybox_image(&d, "auth");
    let remote = format!("{}/alice/busybox:v1", reg.host);
    let ins = ["--insecure-registry", reg.host.as_str()];
    d.ok(&["tag", &img, &remote]);
    let err = d.fails(&["push", ins[0], ins[1], &remote], 1);
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("login"),
        "{err}"
    );
    let err = d.fails(
        &[
            "login", ins[0], ins[1], "-u", "alice", "-p", "wrong", &reg.host,
        ],
        1,
    );
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("incorrect"),
        "{err}"
    );
    d.ok(&[
        "login", ins[0], ins[1], "-u", "alice", "-p", "s3cret", &reg.host,
    ]);
    // The harness points FLOTILLA_CONFIG at <daemon dir>/client-config.
    let config = d
        .data_root()
        .with_file_name("client-config")
        .join("config.json");
    let saved = std::fs::read_to_string(&config).expect("login wrote config.json");
    assert!(
        saved.contains(&reg.host) && !saved.contains("s3cret"),
        "{saved}"
    );
    d.ok(&["push", ins[0], ins[1], &remote]);
    d.ok(&["rmi", &remote]);
    d.ok(&["pull", ins[0], ins[1], &remote]);
    d.ok(&["logout", &reg.host]);
    let text = std::fs::read_to_string(&config).unwrap_or_default();
    assert!(
        !text.contains(&reg.host),
        "logout removed the entry: {text}"
    );
    d.ok(&["rmi", &remote]);
    let err = d.fails(&["pull", ins[0], ins[1], &remote], 1);
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("login"),
        "{err}"
    );
}

/// The largest regular file under `dir` (a registry's only layer blob).
fn largest_file(dir: &Path) -> Option<std::path::PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    let mut biggest: Option<(u64, std::path::PathBuf)> = None;
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if biggest.as_ref().is_none_or(|(s, _)| m.len() > *s) => {
                    biggest = Some((m.len(), e.path()))
                }
                _ => {}
            }
        }
    }
    biggest.map(|(_, p)| p)
}

#[test]
fn a_corrupted_blob_is_refused_and_leaves_no_layer() {
    let reg = RegistryServer::start(RegistryOptions::default());
    let d = Daemon::start();
    let img = busybox_image(&d, "corrupt");
    let remote = format!("{}/c/busybox:v1", reg.host);
    let ins = ["--insecure-registry", reg.host.as_str()];
    d.ok(&["tag", &img, &remote]);
    d.ok(&["push", ins[0], ins[1], &remote]);
    // The layer is the one big blob; overwrite it with garbage of the same size.
    let blob = largest_file(&reg.storage()).expect("the layer blob in the registry storage");
    let blob = &blob;
    let len = std::fs::metadata(blob).unwrap().len() as usize;
    std::fs::write(blob, vec![0x42u8; len]).unwrap();

    let fresh = Daemon::start();
    let err = fresh.fails(&["pull", ins[0], ins[1], &remote], 1);
    assert!(
        err.contains("failed to verify") || err.contains("digest"),
        "{err}"
    );
    assert!(fresh.ok(&["images", "-q"]).trim().is_empty());
    assert!(image_tmp_is_empty(&fresh));
    let layers = std::fs::read_dir(fresh.data_root().join("image/l"))
        .map(|it| it.count())
        .unwrap_or(0);
    assert_eq!(layers, 0, "no layer unpacked from a corrupt blob");
}

/// An OCI layout made by umoci from the busybox rootfs, tagged `latest`.
fn umoci_layout(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let tar = dir.join("rootfs.tar");
    busybox_rootfs_tar(&tar);
    run_ok(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    run_ok(
        Command::new("umoci")
            .args(["new", "--image"])
            .arg(format!("{}:latest", layout.display())),
    );
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:latest", layout.display()))
            .arg(&bundle),
    );
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(bundle.join("rootfs")),
    );
    run_ok(
        Command::new("umoci")
            .args(["repack", "--image"])
            .arg(format!("{}:latest", layout.display()))
            .arg(&bundle),
    );
    run_ok(
        Command::new("umoci")
            .args([
                "config",
                "--config.cmd",
                "echo",
                "--config.cmd",
                "made-by-umoci",
                "--config.label",
                "flotilla.test=amd64",
                "--image",
            ])
            .arg(format!("{}:latest", layout.display())),
    );
    layout
}

#[test]
fn images_made_by_umoci_and_skopeo_gzip_and_zstd() {
    let reg = RegistryServer::start(RegistryOptions::default());
    let d = Daemon::start();
    let layout = umoci_layout(&d.scratch());
    for (name, extra) in [
        ("gz", vec![]),
        ("zst", vec!["--dest-compress-format", "zstd"]),
    ] {
        let remote = format!("{}/umoci/{name}:latest", reg.host);
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--dest-tls-verify=false"])
                .args(&extra)
                .arg(format!("oci:{}:latest", layout.display()))
                .arg(format!("docker://{remote}")),
        );
        d.ok(&["pull", "--insecure-registry", &reg.host, &remote]);
        assert_eq!(
            d.ok(&["run", "--rm", &remote]).trim(),
            "made-by-umoci",
            "{name}"
        );
    }
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn put_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let hex = sha256_hex(data);
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

#[test]
fn an_index_with_an_arm64_decoy_gives_the_amd64_image() {
    let reg = RegistryServer::start(RegistryOptions::default());
    let d = Daemon::start();
    let layout = umoci_layout(&d.scratch());
    // The real manifest, and a decoy: same layers, a config that says arm64.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let real = index["manifests"][0].clone();
    let real_digest = real["digest"].as_str().unwrap();
    let blob = |d: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(real_digest)).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    config["architecture"] = "arm64".into();
    config["config"]["Labels"]["flotilla.test"] = "arm64-decoy".into();
    let (cfg_digest, cfg_size) = put_blob(&layout, &serde_json::to_vec(&config).unwrap());
    let mut decoy = manifest.clone();
    decoy["config"]["digest"] = cfg_digest.into();
    decoy["config"]["size"] = cfg_size.into();
    let (decoy_digest, decoy_size) = put_blob(&layout, &serde_json::to_vec(&decoy).unwrap());
    let inner = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": decoy_digest, "size": decoy_size,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": real_digest, "size": real["size"],
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    let (inner_digest, inner_size) = put_blob(&layout, &serde_json::to_vec(&inner).unwrap());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": inner_digest, "size": inner_size,
                       "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let remote = format!("{}/multi/busybox:latest", reg.host);
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:multi", layout.display()))
            .arg(format!("docker://{remote}")),
    );
    d.ok(&["pull", "--insecure-registry", &reg.host, &remote]);
    let inspect: serde_json::Value =
        serde_json::from_str(&d.ok(&["image", "inspect", &remote])).unwrap();
    let labels = &inspect[0]["Config"]["Labels"];
    assert_eq!(labels["flotilla.test"], "amd64", "{inspect}");
    assert_eq!(d.ok(&["run", "--rm", &remote]).trim(), "made-by-umoci");
}

#[test]
fn bearer_token_auth_through_a_token_server() {
    let reg = RegistryServer::start(RegistryOptions {
        token_auth: Some(("alice".into(), "t0ken-pass".into())),
        ..Default::default()
    });
    let d = Daemon::start();
    let img = busybox_image(&d, "bearer");
    let remote = format!("{}/alice/busybox:v1", reg.host);
    let ins = ["--insecure-registry", reg.host.as_str()];
    d.ok(&["tag", &img, &remote]);
    // No credentials: the token server refuses, so the push does too.
    let err = d.fails(&["push", ins[0], ins[1], &remote], 1);
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    let err = d.fails(
        &[
            "login", ins[0], ins[1], "-u", "alice", "-p", "nope", &reg.host,
        ],
        1,
    );
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    d.ok(&[
        "login",
        ins[0],
        ins[1],
        "-u",
        "alice",
        "-p",
        "t0ken-pass",
        &reg.host,
    ]);
    d.ok(&["push", ins[0], ins[1], &remote]);
    d.ok(&["rmi", &remote]);
    d.ok(&["rmi", &img]);
    d.ok(&["pull", ins[0], ins[1], &remote]);
    assert_eq!(
        d.ok(&["run", "--rm", &remote, "echo", "bearer-ok"]).trim(),
        "bearer-ok"
    );
}
