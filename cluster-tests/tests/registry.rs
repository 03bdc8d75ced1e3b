//! `flotilla pull`, `push`, `login`, `logout` and `run`'s implicit pull against a
//! real registry (Debian's `docker-registry`, see `cluster_tests::registry`):
//! round trips between daemons; images seeded by other tools (umoci layouts
//! copied in by skopeo, gzip, zstd and Docker schema 2); an OCI index and a
//! Docker manifest list with an arm64 decoy; HTTPS with and without the CA
//! file; Basic auth; Bearer tokens from a real token server; and failures
//! (missing tag, plain HTTP, corrupt blob) that must leave the store as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cluster_tests::registry::{run_cmd, run_cmd_timeout, sha256_digest, Registry};
use cluster_tests::{busybox_image, busybox_rootfs_tar, code, Daemon};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// `--insecure-registry HOST` for a plain-HTTP registry.
fn insecure(reg: &Registry) -> [&str; 2] {
    ["--insecure-registry", reg.host()]
}

/// `verb FLAGS… REST…` as one argument list.
fn with<'a>(verb: &'a str, flags: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![verb];
    v.extend_from_slice(flags);
    v.extend_from_slice(rest);
    v
}

/// `repository:tag` → image ID, from `images --format json`.
fn images(d: &Daemon) -> BTreeMap<String, String> {
    d.ok(&["images", "--format", "json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("images json line");
            (
                format!(
                    "{}:{}",
                    v["Repository"].as_str().unwrap_or("?"),
                    v["Tag"].as_str().unwrap_or("?")
                ),
                v["ID"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// Every entry of the image store's state dirs (`l`, `layers`, `images`,
/// `blobs/sha256`, `tmp`), as `dir/name`, sorted: what a failed pull must not change.
fn store_entries(d: &Daemon) -> Vec<String> {
    let root = d.data_root().join("image");
    let mut all = Vec::new();
    for dir in ["l", "layers", "images", "blobs/sha256", "tmp"] {
        for e in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            all.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
        }
    }
    all.sort();
    all
}

fn tmp_entries(d: &Daemon) -> Vec<String> {
    store_entries(d)
        .into_iter()
        .filter(|e| e.starts_with("tmp/"))
        .collect()
}

fn out_text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The manifest the registry serves for `repo:reference` (a plain registry), parsed.
fn manifest(reg: &Registry, repo: &str, reference: &str) -> (String, serde_json::Value) {
    let (media_type, body) = reg.manifest(repo, reference, None);
    let v = serde_json::from_slice(&body).expect("manifest JSON");
    (media_type, v)
}

#[test]
fn push_rmi_pull_run_round_trip() {
    let reg = Registry::start();
    let d = Daemon::start();
    let local = busybox_image(&d, "roundtrip");
    let id = d.inspect(&local)["Id"].as_str().unwrap().to_string();
    let remote = reg.image("team/busybox:v1");
    d.ok(&["tag", &local, &remote]);

    let pushed = d.ok(&with("push", &insecure(&reg), &[&remote]));
    assert!(pushed.contains("Pushed"), "push progress: {pushed}");
    assert!(pushed.contains("v1: digest: sha256:"), "{pushed}");
    // What the registry now holds: an OCI manifest whose config is our image.
    assert_eq!(reg.tags("team/busybox", None), vec!["v1".to_string()]);
    let (media_type, m) = manifest(&reg, "team/busybox", "v1");
    assert_eq!(media_type, OCI_MANIFEST);
    assert_eq!(
        m["config"]["digest"],
        id.as_str(),
        "config digest is the image ID: {m}"
    );
    assert_eq!(m["layers"].as_array().map(Vec::len), Some(1), "{m}");

    // Pushing again uploads nothing new.
    let again = d.ok(&with("push", &insecure(&reg), &[&remote]));
    assert!(again.contains("Layer already exists"), "{again}");
    assert!(!again.contains("Pushed"), "{again}");

    d.ok(&["rmi", &remote, &local]);
    assert!(images(&d).is_empty(), "{:?}", images(&d));
    let pulled = d.ok(&with("pull", &insecure(&reg), &[&remote]));
    assert!(
        pulled.contains("Download complete"),
        "pull progress: {pulled}"
    );
    assert!(pulled.contains("Digest: sha256:"), "{pulled}");
    assert_eq!(
        d.inspect(&remote)["Id"],
        id.as_str(),
        "the pulled image is the pushed one, bit for bit"
    );
    assert_eq!(
        d.ok(&["run", "--rm", &remote, "echo", "from-the-registry"]),
        "from-the-registry\n"
    );
    assert!(tmp_entries(&d).is_empty(), "{:?}", tmp_entries(&d));

    // By digest: the manifest digest push printed, checked against the bytes.
    let digest = pushed
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("push prints the manifest digest")
        .to_string();
    assert_eq!(
        digest,
        sha256_digest(&reg.manifest("team/busybox", "v1", None).1)
    );
    d.ok(&["rmi", &remote]);
    let by_digest = format!("{}@{digest}", reg.image("team/busybox"));
    let pulled = d.ok(&with("pull", &insecure(&reg), &[&by_digest]));
    assert!(pulled.contains(&format!("Digest: {digest}")), "{pulled}");
    let repo_digests = d.inspect(&by_digest)["RepoDigests"].clone();
    assert!(
        repo_digests.to_string().contains(&by_digest),
        "{repo_digests}"
    );
    assert_eq!(
        d.ok(&["run", "--rm", &by_digest, "echo", "by-digest"]),
        "by-digest\n"
    );
    // A digest the registry does not have.
    let unknown = format!("{}@sha256:{}", reg.image("team/busybox"), "0".repeat(64));
    d.fails(&with("pull", &insecure(&reg), &[&unknown]), 1);
}

#[test]
fn a_second_daemon_pulls_what_the_first_pushed() {
    let reg = Registry::start();
    let first = Daemon::start();
    let local = busybox_image(&first, "shared");
    let remote = reg.image("shared/busybox:latest");
    first.ok(&["tag", &local, &remote]);
    first.ok(&with("push", &insecure(&reg), &[&remote]));
    let id = images(&first)[&remote].clone();

    let second = Daemon::start();
    let (rc, out, err) = second.run3(&with(
        "run",
        &["--rm", "--insecure-registry", reg.host()],
        &[
            &remote,
            "sh",
            "-c",
            "echo second-daemon; cat /etc/group | head -n1",
        ],
    ));
    assert_eq!(rc, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "second-daemon\nroot:x:0:\n");
    assert!(
        err.contains("Unable to find image") && err.contains("locally"),
        "run says it pulls: {err}"
    );
    assert!(
        err.contains("Download complete"),
        "run's pull progress on stderr: {err}"
    );
    assert_eq!(images(&second).get(&remote), Some(&id));

    // The same image again: its layer is already there.
    let again = second.ok(&with("pull", &insecure(&reg), &[&remote]));
    assert!(again.contains("Already exists"), "{again}");
    assert!(!again.contains("Download complete"), "{again}");
}

#[test]
fn run_pulls_a_missing_image_by_itself() {
    let reg = Registry::start();
    let seeder = Daemon::start();
    let local = busybox_image(&seeder, "seed");
    let remote = reg.image("lib/implicit:1.0");
    seeder.ok(&["tag", &local, &remote]);
    seeder.ok(&with("push", &insecure(&reg), &[&remote]));
    drop(seeder);

    let d = Daemon::start();
    assert!(images(&d).is_empty());
    let (rc, out, err) = d.run3(&with(
        "run",
        &["--name", "implicit", "--insecure-registry", reg.host()],
        &[&remote, "echo", "pulled-on-demand"],
    ));
    assert_eq!(rc, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "pulled-on-demand\n");
    assert!(
        err.contains(&format!("Unable to find image '{remote}' locally")),
        "{err}"
    );
    assert!(images(&d).contains_key(&remote), "{:?}", images(&d));
    assert_eq!(d.status("implicit"), "exited");
}

#[test]
fn a_missing_tag_is_a_clear_error_and_changes_nothing() {
    let reg = Registry::start();
    let d = Daemon::start();
    // The repository exists, the tag does not.
    let local = busybox_image(&d, "present");
    d.ok(&["tag", &local, &reg.image("repo/app:v1")]);
    d.ok(&with("push", &insecure(&reg), &[&reg.image("repo/app:v1")]));
    let before_images = images(&d);
    let before_store = store_entries(&d);

    let missing = reg.image("repo/app:v9");
    let err = d.fails(&with("pull", &insecure(&reg), &[&missing]), 1);
    assert!(
        err.contains("repo/app:v9") && err.to_lowercase().contains("no such image"),
        "pull names what is missing: {err}"
    );
    let err = d.fails(
        &with(
            "run",
            &["--rm", "--insecure-registry", reg.host()],
            &[&missing, "true"],
        ),
        125,
    );
    assert!(err.contains("repo/app:v9"), "{err}");
    // A repository the registry has never heard of.
    let err = d.fails(
        &with("pull", &insecure(&reg), &[&reg.image("nobody/here:latest")]),
        1,
    );
    assert!(err.contains("nobody/here"), "{err}");

    assert_eq!(images(&d), before_images);
    assert_eq!(
        store_entries(&d),
        before_store,
        "nothing half-made in the store"
    );
    assert!(tmp_entries(&d).is_empty());
    assert!(d.container_ids().is_empty(), "run made no container");
}

#[test]
fn plain_http_needs_the_insecure_registry_flag() {
    let reg = Registry::start();
    let d = Daemon::start();
    let local = busybox_image(&d, "plain");
    let remote = reg.image("plain/busybox:v1");
    d.ok(&["tag", &local, &remote]);
    let before = store_entries(&d);
    for args in [
        vec!["pull", remote.as_str()],
        vec!["push", remote.as_str()],
        vec!["login", "-u", "u", "-p", "p", reg.host()],
    ] {
        let err = d.fails(&args, 1);
        assert!(
            err.contains("--insecure-registry") && err.contains(reg.host()),
            "{args:?} names the flag and the host: {err}"
        );
    }
    assert!(
        reg.tags("plain/busybox", None).is_empty(),
        "nothing was pushed"
    );
    assert_eq!(store_entries(&d), before);
    // With the flag, the same registry works.
    d.ok(&with("push", &insecure(&reg), &[&remote]));
    assert_eq!(reg.tags("plain/busybox", None), vec!["v1".to_string()]);
}

#[test]
fn https_registry_needs_its_ca_file() {
    let reg = Registry::builder().tls().start();
    let ca = reg.ca_file().expect("a CA").to_string_lossy().into_owned();
    let d = Daemon::start();
    let local = busybox_image(&d, "tls");
    let remote = reg.image("secure/busybox:v1");
    d.ok(&["tag", &local, &remote]);

    // Without the CA: the certificate is not trusted, and the error says so.
    for verb in ["push", "pull"] {
        let err = d.fails(&[verb, &remote], 1);
        assert!(
            err.to_lowercase().contains("certificate"),
            "{verb} without --registry-ca reports a certificate error: {err}"
        );
        assert!(err.contains("--registry-ca"), "and names the flag: {err}");
    }
    assert!(reg.tags("secure/busybox", None).is_empty());

    let pushed = d.ok(&["push", "--registry-ca", &ca, &remote]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    d.ok(&["rmi", &remote, &local]);
    let pulled = d.ok(&["pull", "--registry-ca", &ca, &remote]);
    assert!(pulled.contains("Download complete"), "{pulled}");
    assert_eq!(
        d.ok(&["run", "--rm", &remote, "echo", "tls-ok"]),
        "tls-ok\n"
    );
    // A file that holds no certificate is refused as such.
    let bogus = d.scratch().join("not-a-ca.pem");
    std::fs::write(&bogus, "hello\n").unwrap();
    let err = d.fails(
        &["pull", "--registry-ca", bogus.to_str().unwrap(), &remote],
        1,
    );
    assert!(err.contains("not-a-ca.pem"), "{err}");
}

#[test]
fn login_and_pull_over_https_with_basic_auth() {
    let reg = Registry::builder()
        .tls()
        .htpasswd("bob", "tls-and-pw")
        .start();
    let ca = reg.ca_file().expect("a CA").to_string_lossy().into_owned();
    let d = Daemon::start();
    let config = d.scratch().join("flotilla-config");
    let cli = |args: &[&str]| cli_with_config(&d, &config, args, None);
    let local = busybox_image(&d, "both");
    let remote = reg.image("bob/busybox:v1");
    d.ok(&["tag", &local, &remote]);
    // The certificate is checked before any password is sent.
    let out = cli(&["login", "-u", "bob", "-p", "tls-and-pw", reg.host()]);
    let (_, err) = out_text(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(auths(&config).get(reg.host()).is_none());
    let out = cli(&[
        "login",
        "--registry-ca",
        &ca,
        "-u",
        "bob",
        "-p",
        "tls-and-pw",
        reg.host(),
    ]);
    assert_eq!(code(&out), 0, "{:?}", out_text(&out));
    let out = cli(&["push", "--registry-ca", &ca, &remote]);
    assert_eq!(code(&out), 0, "{:?}", out_text(&out));
    d.ok(&["rmi", &remote, &local]);
    let out = cli(&[
        "run",
        "--rm",
        "--registry-ca",
        &ca,
        &remote,
        "echo",
        "https+basic",
    ]);
    let (stdout, err) = out_text(&out);
    assert_eq!(code(&out), 0, "{stdout}{err}");
    assert_eq!(stdout, "https+basic\n");
}

/// Runs the CLI against `d` with `FLOTILLA_CONFIG=config` (this test's own
/// credentials file), feeding `input` on stdin.
fn cli_with_config(d: &Daemon, config: &Path, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut cmd = d.command(args);
    cmd.env("FLOTILLA_CONFIG", config);
    run_cmd_timeout(&mut cmd, input, Duration::from_secs(30))
}

fn auths(config: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(config.join("config.json")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()["auths"].clone()
}

#[test]
fn basic_auth_login_push_pull_logout() {
    let reg = Registry::builder().htpasswd("alice", "s3cret-pw").start();
    let d = Daemon::start();
    let config = d.scratch().join("flotilla-config");
    let cli = |args: &[&str], input: Option<&[u8]>| cli_with_config(&d, &config, args, input);
    let ins = insecure(&reg);
    let local = busybox_image(&d, "auth");
    let remote = reg.image("alice/busybox:v1");
    d.ok(&["tag", &local, &remote]);

    // Not logged in: refused.
    let out = cli(&with("push", &ins, &[&remote]), None);
    let (_, err) = out_text(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.to_lowercase().contains("unauthorized") && err.contains("login"),
        "{err}"
    );
    assert!(reg
        .tags("alice/busybox", Some("alice:s3cret-pw"))
        .is_empty());

    // A wrong password: refused, nothing stored.
    let out = cli(
        &with(
            "login",
            &ins,
            &["-u", "alice", "--password-stdin", reg.host()],
        ),
        Some(b"wrong\n"),
    );
    let (_, err) = out_text(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    assert!(
        auths(&config).get(reg.host()).is_none(),
        "{}",
        auths(&config)
    );

    // The right one: stored for this host only, in config.json (mode 0600).
    let out = cli(
        &with(
            "login",
            &ins,
            &["-u", "alice", "--password-stdin", reg.host()],
        ),
        Some(b"s3cret-pw\n"),
    );
    let (stdout, err) = out_text(&out);
    assert_eq!(code(&out), 0, "{stdout}{err}");
    assert!(stdout.contains("Login Succeeded"), "{stdout}");
    let entry = auths(&config)[reg.host()].clone();
    assert_eq!(
        entry["auth"], "YWxpY2U6czNjcmV0LXB3",
        "base64(alice:s3cret-pw): {entry}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(config.join("config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let out = cli(&with("push", &ins, &[&remote]), None);
    assert_eq!(code(&out), 0, "{:?}", out_text(&out));
    assert_eq!(
        reg.tags("alice/busybox", Some("alice:s3cret-pw")),
        vec!["v1".to_string()]
    );
    d.ok(&["rmi", &remote, &local]);
    // The harness's own config (no login there) is refused; ours works.
    let err = d.fails(&with("pull", &ins, &[&remote]), 1);
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    let out = cli(&with("pull", &ins, &[&remote]), None);
    assert_eq!(code(&out), 0, "{:?}", out_text(&out));
    assert_eq!(
        d.ok(&["run", "--rm", &remote, "echo", "authed"]),
        "authed\n"
    );
    // run's own pull uses the stored credentials too.
    d.ok(&["rmi", &remote]);
    let out = cli(
        &with(
            "run",
            &["--rm", ins[0], ins[1]],
            &[&remote, "echo", "run-authed"],
        ),
        None,
    );
    let (stdout, err) = out_text(&out);
    assert_eq!(code(&out), 0, "{stdout}{err}");
    assert_eq!(stdout, "run-authed\n");
    assert!(err.contains("Unable to find image"), "{err}");

    // logout removes the entry; pulling is refused again.
    let out = cli(&["logout", reg.host()], None);
    assert_eq!(code(&out), 0, "{:?}", out_text(&out));
    assert!(
        auths(&config).get(reg.host()).is_none(),
        "{}",
        auths(&config)
    );
    d.ok(&["rmi", &remote]);
    let out = cli(&with("pull", &ins, &[&remote]), None);
    assert_eq!(code(&out), 1, "{:?}", out_text(&out));
    assert!(images(&d).is_empty());
}

#[test]
fn a_corrupted_blob_fails_the_digest_check_and_leaves_no_layer() {
    let reg = Registry::start();
    let d = Daemon::start();
    let local = busybox_image(&d, "corrupt");
    let remote = reg.image("c/busybox:v1");
    d.ok(&["tag", &local, &remote]);
    d.ok(&with("push", &insecure(&reg), &[&remote]));
    let (_, m) = manifest(&reg, "c/busybox", "v1");
    let layer = m["layers"][0]["digest"]
        .as_str()
        .expect("a layer")
        .to_string();
    let blob = reg.blob_file(&layer);
    let len = std::fs::metadata(&blob)
        .unwrap_or_else(|e| panic!("layer blob {}: {e}", blob.display()))
        .len();
    assert_eq!(Some(len), m["layers"][0]["size"].as_u64());
    // Same size, other bytes: only the digest check can tell.
    std::fs::write(&blob, vec![0x5au8; len as usize]).unwrap();

    let fresh = Daemon::start();
    let err = fresh.fails(&with("pull", &insecure(&reg), &[&remote]), 1);
    assert!(
        err.contains("verify") && err.contains(&format!("expected {layer}, got sha256:")),
        "the error reports the digest mismatch of the blob: {err}"
    );
    assert!(images(&fresh).is_empty());
    assert!(
        store_entries(&fresh)
            .iter()
            .all(|e| !e.starts_with("l/") && !e.starts_with("layers/") && !e.starts_with("tmp/")),
        "no layer, no spool left: {:?}",
        store_entries(&fresh)
    );
    let err = fresh.fails(
        &with(
            "run",
            &["--rm", "--insecure-registry", reg.host()],
            &[&remote, "true"],
        ),
        125,
    );
    assert!(err.contains(&format!("expected {layer}")), "{err}");
    assert!(fresh.container_ids().is_empty());
}

/// An OCI image layout made by umoci from the busybox rootfs: one gzip layer,
/// `Cmd ["echo", "made-by-umoci"]`, tagged `latest` in `dir/layout`.
fn umoci_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let tar = dir.join("rootfs.tar");
    busybox_rootfs_tar(&tar);
    let image = format!("{}:latest", layout.display());
    run_cmd(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    run_cmd(Command::new("umoci").args(["new", "--image", &image]));
    run_cmd(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image", &image])
            .arg(&bundle),
    );
    run_cmd(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(bundle.join("rootfs")),
    );
    run_cmd(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    );
    run_cmd(Command::new("umoci").args([
        "config",
        "--config.cmd",
        "echo",
        "--config.cmd",
        "made-by-umoci",
        "--image",
        &image,
    ]));
    layout
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap_or_else(|e| panic!("blob {digest}: {e}"))
}

/// Writes `value` as a blob of the layout; returns its descriptor fields (digest, size).
fn put_blob(layout: &Path, value: &serde_json::Value) -> (String, usize) {
    let data = serde_json::to_vec(value).unwrap();
    let digest = sha256_digest(&data);
    std::fs::write(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
        &data,
    )
    .unwrap();
    (digest, data.len())
}

/// `skopeo copy` from the layout's `tag` to `docker://DEST` (plain HTTP), with `extra` flags.
fn skopeo_copy(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    run_cmd(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}")),
    );
}

#[test]
fn images_seeded_by_umoci_and_skopeo_gzip_zstd_and_docker_v2() {
    let reg = Registry::start();
    let d = Daemon::start();
    let layout = umoci_layout(&d.scratch());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let umoci_manifest: serde_json::Value = serde_json::from_slice(&read_blob(
        &layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let umoci_config: serde_json::Value = serde_json::from_slice(&read_blob(
        &layout,
        umoci_manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let diff_ids = umoci_config["rootfs"]["diff_ids"].clone();

    // skopeo 1.9 recompresses to zstd only towards an OCI layout (towards
    // docker:// it silently writes gzip), and only to a fresh layout (into the
    // same one it reuses the gzip blob), so make a zstd copy in a layout of its
    // own and upload that with curl.
    let zstd_layout = d.scratch().join("layout-zstd");
    run_cmd(
        Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-compress",
                "--dest-compress-format",
                "zstd",
            ])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("oci:{}:latest", zstd_layout.display())),
    );
    for (repo, src_tag, extra, want_type, want_layer) in [
        (
            "seed/gzip",
            "latest",
            vec![],
            OCI_MANIFEST,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "seed/zstd",
            "zstd",
            vec![],
            OCI_MANIFEST,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (
            "seed/docker",
            "latest",
            vec!["--format", "v2s2"],
            DOCKER_MANIFEST,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    ] {
        let remote = reg.image(&format!("{repo}:latest"));
        if src_tag == "zstd" {
            push_with_curl(&reg, &zstd_layout, "latest", repo);
        } else {
            skopeo_copy(&layout, src_tag, &remote, &extra);
        }
        // The registry really holds what this case is about.
        let (media_type, m) = manifest(&reg, repo, "latest");
        assert_eq!(media_type, want_type, "{repo}: {m}");
        assert_eq!(m["layers"][0]["mediaType"], want_layer, "{repo}: {m}");

        let pulled = d.ok(&with("pull", &insecure(&reg), &[&remote]));
        assert!(pulled.contains("Download complete"), "{repo}: {pulled}");
        let inspect = d.inspect(&remote);
        assert_eq!(
            inspect["RootFS"]["Layers"], diff_ids,
            "{repo}: diff_ids as umoci made them"
        );
        assert_eq!(d.ok(&["run", "--rm", &remote]), "made-by-umoci\n", "{repo}");
        // Pushed back under another name: the layer goes up as it came down
        // (same blob, same compression, as an OCI media type).
        let again = reg.image(&format!("{repo}-again:latest"));
        d.ok(&["tag", &remote, &again]);
        d.ok(&with("push", &insecure(&reg), &[&again]));
        let (_, pushed) = manifest(&reg, &format!("{repo}-again"), "latest");
        assert_eq!(
            pushed["layers"][0]["digest"], m["layers"][0]["digest"],
            "{repo}"
        );
        let oci_type = want_layer.replace(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        );
        assert_eq!(
            pushed["layers"][0]["mediaType"],
            oci_type.as_str(),
            "{repo}"
        );
        d.ok(&["rmi", &again]);
        // Removed again, layer and all, so that the next case downloads and
        // decompresses its own blob.
        d.ok(&["rmi", &remote]);
        assert!(
            store_entries(&d).iter().all(|e| !e.starts_with("l/")),
            "{:?}",
            store_entries(&d)
        );
    }
}

/// Uploads the layout's image `tag` (config, layers, manifest as they are) to
/// `repo:latest` with curl.
fn push_with_curl(reg: &Registry, layout: &Path, tag: &str, repo: &str) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"));
    let body = read_blob(layout, entry["digest"].as_str().unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap()];
    for layer in manifest["layers"].as_array().unwrap() {
        blobs.push(layer["digest"].as_str().unwrap());
    }
    for digest in blobs {
        assert_eq!(reg.upload_blob(repo, &read_blob(layout, digest)), digest);
    }
    reg.put_manifest(repo, "latest", OCI_MANIFEST, &body);
}

/// Adds an arm64 decoy of the layout's `latest` image (same layer, a config
/// saying arm64 whose Cmd prints `arm64-decoy`) tagged `arm64`, and an index
/// tagged `multi` listing the decoy FIRST and the amd64 image second, and an
/// index tagged `arm-only` listing the decoy alone.
fn add_decoy_and_index(layout: &Path) {
    let path = layout.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let real = top["manifests"][0].clone();
    let real_digest = real["digest"].as_str().unwrap().to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&read_blob(layout, &real_digest)).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&read_blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    config["architecture"] = "arm64".into();
    config["variant"] = "v8".into();
    config["config"]["Cmd"] = serde_json::json!(["echo", "arm64-decoy"]);
    let (cfg_digest, cfg_size) = put_blob(layout, &config);
    let mut decoy = manifest.clone();
    decoy["config"]["digest"] = cfg_digest.into();
    decoy["config"]["size"] = cfg_size.into();
    let (decoy_digest, decoy_size) = put_blob(layout, &decoy);
    let inner = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": decoy_digest, "size": decoy_size,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": real_digest, "size": real["size"],
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    let (inner_digest, inner_size) = put_blob(layout, &inner);
    let entries = top["manifests"].as_array_mut().unwrap();
    entries.push(serde_json::json!({
        "mediaType": OCI_MANIFEST, "digest": decoy_digest, "size": decoy_size,
        "annotations": {"org.opencontainers.image.ref.name": "arm64"}
    }));
    entries.push(serde_json::json!({
        "mediaType": OCI_INDEX, "digest": inner_digest, "size": inner_size,
        "annotations": {"org.opencontainers.image.ref.name": "multi"}
    }));
    // And an index with the arm64 image only.
    let arm_only = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [inner["manifests"][0].clone()],
    });
    let (arm_digest, arm_size) = put_blob(layout, &arm_only);
    let entries = top["manifests"].as_array_mut().unwrap();
    entries.push(serde_json::json!({
        "mediaType": OCI_INDEX, "digest": arm_digest, "size": arm_size,
        "annotations": {"org.opencontainers.image.ref.name": "arm-only"}
    }));
    std::fs::write(&path, serde_json::to_vec(&top).unwrap()).unwrap();
}

#[test]
fn an_index_or_manifest_list_with_an_arm64_decoy_gives_the_amd64_image() {
    let reg = Registry::start();
    let d = Daemon::start();
    let layout = umoci_layout(&d.scratch());
    add_decoy_and_index(&layout);
    // Both single-platform images first, then the index over them (OCI), and
    // the same index converted to a Docker manifest list.
    skopeo_copy(&layout, "latest", &reg.image("multi/app:amd64"), &[]);
    skopeo_copy(&layout, "arm64", &reg.image("multi/app:arm64"), &[]);
    skopeo_copy(&layout, "multi", &reg.image("multi/app:oci"), &["--all"]);
    skopeo_copy(
        &layout,
        "multi",
        &reg.image("multi/app:docker"),
        &["--all", "--format", "v2s2"],
    );

    for (tag, want_type) in [("oci", OCI_INDEX), ("docker", DOCKER_LIST)] {
        let (media_type, list) = manifest(&reg, "multi/app", tag);
        assert_eq!(media_type, want_type, "{list}");
        assert_eq!(
            list["manifests"][0]["platform"]["architecture"], "arm64",
            "decoy first: {list}"
        );
        let remote = reg.image(&format!("multi/app:{tag}"));
        d.ok(&with("pull", &insecure(&reg), &[&remote]));
        let inspect = d.inspect(&remote);
        assert_eq!(inspect["Architecture"], "amd64", "{tag}: {inspect}");
        assert_eq!(d.ok(&["run", "--rm", &remote]), "made-by-umoci\n", "{tag}");
    }

    // An index with no linux/amd64 entry is refused, not pulled for another platform.
    skopeo_copy(
        &layout,
        "arm-only",
        &reg.image("multi/app:arm-only"),
        &["--all"],
    );
    let before = store_entries(&d);
    let arm_only = reg.image("multi/app:arm-only");
    let err = d.fails(&with("pull", &insecure(&reg), &[&arm_only]), 1);
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "names what is wanted and what is offered: {err}"
    );
    assert!(!images(&d).contains_key(&arm_only), "{:?}", images(&d));
    assert_eq!(store_entries(&d), before);
}

#[test]
fn bearer_token_auth_through_a_real_token_server() {
    let reg = Registry::builder()
        .token_auth("alice", "t0ken-pass")
        .token_user("reader", "read-only", &["pull"])
        .start();
    let d = Daemon::start();
    let config = d.scratch().join("flotilla-config");
    let cli = |args: &[&str], input: Option<&[u8]>| cli_with_config(&d, &config, args, input);
    let ins = insecure(&reg);
    let local = busybox_image(&d, "bearer");
    let remote = reg.image("alice/busybox:v1");
    d.ok(&["tag", &local, &remote]);

    // Anonymous: the token server hands out a token that grants nothing.
    let out = cli(&with("push", &ins, &[&remote]), None);
    let (_, err) = out_text(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    assert!(
        reg.token_requests()
            .iter()
            .any(|(user, _, status)| user.is_empty() && *status == 200),
        "an anonymous token was asked for: {:?}",
        reg.token_requests()
    );

    // Wrong password: the token server refuses, so login does.
    let out = cli(
        &with("login", &ins, &["-u", "alice", "-p", "nope", reg.host()]),
        None,
    );
    let (_, err) = out_text(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    assert!(auths(&config).get(reg.host()).is_none());

    let out = cli(
        &with(
            "login",
            &ins,
            &["-u", "alice", "--password-stdin", reg.host()],
        ),
        Some(b"t0ken-pass"),
    );
    assert_eq!(code(&out), 0, "{:?}", out_text(&out));
    let out = cli(&with("push", &ins, &[&remote]), None);
    assert_eq!(code(&out), 0, "{:?}", out_text(&out));
    assert!(
        reg.token_requests()
            .iter()
            .any(|(user, query, status)| user == "alice"
                && *status == 200
                && query.contains("scope=repository:alice/busybox:pull,push")
                && query.contains("service=flotilla-registry")),
        "the push asked for a pull,push token for the repository: {:?}",
        reg.token_requests()
    );
    d.ok(&["rmi", &remote, &local]);
    let out = cli(&with("pull", &ins, &[&remote]), None);
    assert_eq!(code(&out), 0, "{:?}", out_text(&out));
    assert_eq!(
        d.ok(&["run", "--rm", &remote, "echo", "bearer-ok"]),
        "bearer-ok\n"
    );

    // A user granted only pull: pull works, push of a new tag is refused.
    let out = cli(
        &with(
            "login",
            &ins,
            &["-u", "reader", "-p", "read-only", reg.host()],
        ),
        None,
    );
    assert_eq!(code(&out), 0, "{:?}", out_text(&out));
    d.ok(&["rmi", &remote]);
    let out = cli(&with("pull", &ins, &[&remote]), None);
    assert_eq!(code(&out), 0, "reader pulls: {:?}", out_text(&out));
    let other = reg.image("alice/busybox:v2");
    d.ok(&["tag", &remote, &other]);
    let out = cli(&with("push", &ins, &[&other]), None);
    let (_, err) = out_text(&out);
    assert_eq!(code(&out), 1, "reader may not push: {err}");
    assert!(
        err.to_lowercase().contains("unauthorized") || err.to_lowercase().contains("denied"),
        "{err}"
    );
}
