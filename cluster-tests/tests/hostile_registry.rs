//! Hostile registries and archives against `flotilla pull` and `flotilla load`
//! (issue 10): path-shaped digests (`sha256:/tmp/…`, `sha256:../../x`) must
//! not name a file, oversized or endless documents and blobs stop at their
//! limits, a gzip bomb stops at `--max-layer-size`, the `--min-free-space`
//! reserve is kept, and credentials are not sent to a token realm on another
//! host. Every case checks that nothing outside was touched and that the
//! store's temp area is empty afterwards. The registry is
//! `cluster_tests::fake_registry`, which serves exactly the lies each test
//! puts in it and records what it receives.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cluster_tests::fake_registry::{Body, FakeRegistry, Reply};
use cluster_tests::registry::{run_cmd_timeout, sha256_digest};
use cluster_tests::{code, poll_for, Daemon};
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Runs `sh -c script`, returning stdout (60 s limit).
fn sh(script: &str, input: Option<&[u8]>) -> Vec<u8> {
    let out = run_cmd_timeout(
        Command::new("sh").args(["-c", script]),
        input,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "sh -c {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn gzip(data: &[u8]) -> Vec<u8> {
    sh("gzip -c -n", Some(data))
}

/// A layer tar with one file `name` holding `content`.
fn layer_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, content).expect("tar entry");
    b.into_inner().expect("tar")
}

/// A gzip bomb: a layer tar holding one file of `size` zero bytes, gzipped
/// (about 1/200 of `size`). Returns (gzip bytes, diff_id).
fn gzip_bomb(dir: &Path, size: u64) -> (Vec<u8>, String) {
    assert_eq!(size % 512, 0);
    let mut h = tar::Header::new_gnu();
    h.set_path("bomb").expect("path");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let hdr = dir.join("bomb-header");
    std::fs::write(&hdr, h.as_bytes()).expect("write header");
    let stream = format!(
        "{{ cat {}; head -c {size} /dev/zero; head -c 1024 /dev/zero; }}",
        hdr.display()
    );
    let sum = sh(&format!("{stream} | sha256sum"), None);
    let diff_id = format!(
        "sha256:{}",
        String::from_utf8_lossy(&sum)
            .split_whitespace()
            .next()
            .unwrap_or_default()
    );
    (sh(&format!("{stream} | gzip -c -1 -n"), None), diff_id)
}

/// A layer whose first entry is a GNU long name of `size` zero bytes (a tar
/// reader that reads long names into memory would hold all of it), gzipped.
/// Returns (gzip bytes, diff_id).
fn long_name_bomb(dir: &Path, size: u64) -> (Vec<u8>, String) {
    assert_eq!(size % 512, 0);
    let mut long = tar::Header::new_gnu();
    long.set_path("././@LongLink").expect("path");
    long.set_size(size);
    long.set_mode(0o644);
    long.set_entry_type(tar::EntryType::GNULongName);
    long.set_cksum();
    let mut file = tar::Header::new_gnu();
    file.set_path("x").expect("path");
    file.set_size(0);
    file.set_mode(0o644);
    file.set_entry_type(tar::EntryType::Regular);
    file.set_cksum();
    let (h1, h2) = (dir.join("long-header"), dir.join("file-header"));
    std::fs::write(&h1, long.as_bytes()).expect("write header");
    std::fs::write(&h2, file.as_bytes()).expect("write header");
    let stream = format!(
        "{{ cat {}; head -c {size} /dev/zero; cat {}; head -c 1024 /dev/zero; }}",
        h1.display(),
        h2.display()
    );
    let sum = sh(&format!("{stream} | sha256sum"), None);
    let diff_id = format!(
        "sha256:{}",
        String::from_utf8_lossy(&sum)
            .split_whitespace()
            .next()
            .unwrap_or_default()
    );
    (sh(&format!("{stream} | gzip -c -1 -n"), None), diff_id)
}

/// An image config for these diff_ids.
fn config(diff_ids: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/x"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config json")
}

/// A descriptor; `size: None` leaves the size out.
fn desc(media_type: &str, digest: &str, size: Option<usize>) -> serde_json::Value {
    let mut d = json!({"mediaType": media_type, "digest": digest});
    if let Some(n) = size {
        d["size"] = json!(n);
    }
    d
}

fn manifest(config: serde_json::Value, layers: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    }))
    .expect("manifest json")
}

/// Serves a well-formed one-layer image as `repo:tag`; returns its manifest.
fn serve_good_image(r: &FakeRegistry, repo: &str, tag: &str, content: &[u8]) -> Vec<u8> {
    let tar = layer_tar("x", content);
    let gz = gzip(&tar);
    let cfg = config(&[&sha256_digest(&tar)]);
    let (cd, ld) = (sha256_digest(&cfg), sha256_digest(&gz));
    let m = manifest(
        desc(OCI_CONFIG, &cd, Some(cfg.len())),
        vec![desc(LAYER_GZ, &ld, Some(gz.len()))],
    );
    r.route(
        &format!("/v2/{repo}/manifests/{tag}"),
        Reply::ok(OCI_MANIFEST, m.clone()),
    );
    r.route(
        &format!("/v2/{repo}/blobs/{cd}"),
        Reply::ok("application/octet-stream", cfg),
    );
    r.route(
        &format!("/v2/{repo}/blobs/{ld}"),
        Reply::ok("application/octet-stream", gz),
    );
    m
}

/// `flotilla pull --insecure-registry HOST image` (any outcome).
fn pull(d: &Daemon, r: &FakeRegistry, image: &str) -> Output {
    d.cli(&["pull", "--insecure-registry", r.host(), image])
}

/// Asserts the command failed and its stderr contains every one of `want`;
/// returns stderr.
fn refused(out: &Output, want: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        code(out),
        1,
        "should have failed; stdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    for w in want {
        assert!(err.contains(w), "error should mention {w:?}: {err}");
    }
    err
}

/// Entries of the image store's directories (`tmp`, `l`, `layers`,
/// `blobs/sha256`, `images`) and any stray file directly in the store root.
fn store_entries(d: &Daemon) -> Vec<String> {
    let root = d.data_root().join("image");
    let mut all = Vec::new();
    for dir in ["tmp", "l", "layers", "blobs/sha256", "images"] {
        for e in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            all.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
        }
    }
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !["tmp", "l", "layers", "blobs", "images", "repositories.json"].contains(&name.as_str())
        {
            all.push(name);
        }
    }
    all.sort();
    all
}

/// A file outside the data root that a hostile digest aims at: 12 characters
/// (`/tmp/fv` + 5 hex), as many as the old code kept of a digest. Holds
/// "precious"; removed on drop.
struct Victim(PathBuf);

impl Victim {
    fn new(n: u32) -> Victim {
        let id = (std::process::id().wrapping_mul(7).wrapping_add(n)) & 0xfffff;
        let path = PathBuf::from(format!("/tmp/fv{id:05x}"));
        assert_eq!(path.as_os_str().len(), 12);
        std::fs::write(&path, "precious").expect("write victim");
        Victim(path)
    }

    fn digest(&self) -> String {
        format!("sha256:{}", self.0.display())
    }

    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.0).ok().as_deref(),
            Some("precious"),
            "{} was modified or removed",
            self.0.display()
        );
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn path_shaped_digests_never_name_a_file() {
    let d = Daemon::start();
    let r = FakeRegistry::start("127.0.0.1");
    // Control: the fake registry serves a well-formed image that pulls.
    serve_good_image(&r, "good/app", "v1", b"fine");
    let out = pull(&d, &r, &format!("{}/good/app:v1", r.host()));
    assert_eq!(code(&out), 0, "{:?}", String::from_utf8_lossy(&out.stderr));
    let clean = store_entries(&d);
    assert!(
        clean.iter().all(|e| !e.starts_with("tmp/")),
        "tmp after a good pull: {clean:?}"
    );

    let tar = layer_tar("x", b"evil");
    let gz = gzip(&tar);
    let cfg = config(&[&sha256_digest(&tar)]);
    let cd = sha256_digest(&cfg);
    // Every blob of the evil repository: the layer bytes (or the config).
    r.route(
        "/v2/evil/app/blobs/*",
        Reply::ok("application/octet-stream", gz.clone()),
    );
    r.route(
        &format!("/v2/evil/app/blobs/{cd}"),
        Reply::ok("application/octet-stream", cfg.clone()),
    );
    let victim = Victim::new(1);
    let outside = d.data_root().join("image").join("x");

    // 1. A layer digest naming an absolute path outside the data root; a full
    //    body (the old code wrote it there, then deleted the file on mismatch).
    r.route(
        "/v2/evil/app/manifests/abs",
        Reply::ok(
            OCI_MANIFEST,
            manifest(
                desc(OCI_CONFIG, &cd, Some(cfg.len())),
                vec![desc(LAYER_GZ, &victim.digest(), Some(gz.len()))],
            ),
        ),
    );
    // 2. `sha256:../../x` (from the pull's temp dir: the store root) with a
    //    body cut short (the old code left the partial file there).
    r.route(
        "/v2/evil/app/manifests/dotdot",
        Reply::ok(
            OCI_MANIFEST,
            manifest(
                desc(OCI_CONFIG, &cd, Some(cfg.len())),
                vec![desc(LAYER_GZ, "sha256:../../x", Some(4096))],
            ),
        ),
    );
    r.route(
        "/v2/evil/app/blobs/x",
        Reply::body(
            "application/octet-stream",
            Body::Short {
                declared: 4096,
                data: b"partial".to_vec(),
            },
        ),
    );
    // 3. The config descriptor path-shaped.
    r.route(
        "/v2/evil/app/manifests/config",
        Reply::ok(
            OCI_MANIFEST,
            manifest(
                desc(OCI_CONFIG, &victim.digest(), Some(cfg.len())),
                vec![desc(LAYER_GZ, &sha256_digest(&gz), Some(gz.len()))],
            ),
        ),
    );
    // 4. An index entry path-shaped.
    r.route(
        "/v2/evil/app/manifests/index",
        Reply::ok(
            OCI_INDEX,
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{
                    "mediaType": OCI_MANIFEST,
                    "digest": "sha256:../../../../etc/passwd",
                    "size": 10,
                    "platform": {"os": "linux", "architecture": "amd64"},
                }],
            }))
            .expect("index"),
        ),
    );
    for tag in ["dotdot", "abs", "config", "index"] {
        let out = pull(&d, &r, &format!("{}/evil/app:{tag}", r.host()));
        victim.assert_untouched();
        assert!(
            !outside.exists(),
            "{tag}: {} was created by the pull",
            outside.display()
        );
        assert_eq!(store_entries(&d), clean, "{tag}: the store changed");
        let err = refused(&out, &["invalid digest", "sha256:"]);
        assert!(err.contains(r.host()), "{tag}: names the registry: {err}");
    }
    // The refusals happened at the manifest: no evil blob was even asked for.
    assert!(
        r.requests()
            .iter()
            .all(|q| !q.target.starts_with("/v2/evil/app/blobs/")),
        "{:?}",
        r.requests()
    );
}

#[test]
fn oversized_documents_and_blobs_stop_at_their_limits() {
    let d = Daemon::builder().arg("--max-layer-size").arg("16m").start();
    let r = FakeRegistry::start("127.0.0.1");
    let clean = store_entries(&d);
    let host = r.host().to_string();

    // A manifest that never ends: stopped just past 4 MiB, not read to the end.
    r.route(
        "/v2/big/app/manifests/endless",
        Reply::body(OCI_MANIFEST, Body::Endless),
    );
    let out = pull(&d, &r, &format!("{host}/big/app:endless"));
    refused(&out, &["manifest", "larger than 4.0 MiB"]);
    let sent = poll_for(
        Duration::from_secs(20),
        "the endless manifest's request to finish",
        || {
            r.requests()
                .iter()
                .find(|q| q.target.ends_with("/manifests/endless"))
                .map(|q| q.sent)
                .ok_or_else(|| format!("{:?}", r.requests()))
        },
    );
    assert!(
        sent < 64 << 20,
        "the daemon read {sent} bytes of an endless manifest"
    );
    assert_eq!(store_entries(&d), clean);

    // A manifest announcing 5 MiB is refused before its body is read.
    r.route(
        "/v2/big/app/manifests/announced",
        Reply::body(
            OCI_MANIFEST,
            Body::Short {
                declared: 5 << 20,
                data: b"{}".to_vec(),
            },
        ),
    );
    let out = pull(&d, &r, &format!("{host}/big/app:announced"));
    refused(&out, &["larger than 4.0 MiB"]);

    // Layers that are longer than they say, or that never end.
    let tar = layer_tar("x", b"ok");
    let cfg = config(&[&sha256_digest(&tar)]);
    let cd = sha256_digest(&cfg);
    r.route(
        &format!("/v2/big/app/blobs/{cd}"),
        Reply::ok("application/octet-stream", cfg.clone()),
    );
    let long_digest = format!("sha256:{}", "1".repeat(64));
    let endless_digest = format!("sha256:{}", "2".repeat(64));
    r.route(
        &format!("/v2/big/app/blobs/{long_digest}"),
        Reply::ok("application/octet-stream", vec![7u8; 1 << 20]),
    );
    r.route(
        &format!("/v2/big/app/blobs/{endless_digest}"),
        Reply::body("application/octet-stream", Body::Endless),
    );
    r.route(
        "/v2/big/app/manifests/long",
        Reply::ok(
            OCI_MANIFEST,
            manifest(
                desc(OCI_CONFIG, &cd, Some(cfg.len())),
                vec![desc(LAYER_GZ, &long_digest, Some(1000))],
            ),
        ),
    );
    let out = pull(&d, &r, &format!("{host}/big/app:long"));
    refused(&out, &[&long_digest, "larger than 1000 B"]);
    assert_eq!(store_entries(&d), clean, "after the long layer");

    // No size in the descriptor: the daemon's --max-layer-size (16m) bounds it.
    r.route(
        "/v2/big/app/manifests/unsized",
        Reply::ok(
            OCI_MANIFEST,
            manifest(
                desc(OCI_CONFIG, &cd, Some(cfg.len())),
                vec![desc(LAYER_GZ, &endless_digest, None)],
            ),
        ),
    );
    let out = pull(&d, &r, &format!("{host}/big/app:unsized"));
    refused(
        &out,
        &[&endless_digest, "larger than 16.0 MiB", "--max-layer-size"],
    );
    let sent = poll_for(
        Duration::from_secs(20),
        "the endless layer's request to finish",
        || {
            r.requests()
                .iter()
                .find(|q| q.target.ends_with(&endless_digest))
                .map(|q| q.sent)
                .ok_or_else(|| format!("{:?}", r.requests()))
        },
    );
    assert!(
        sent < 128 << 20,
        "the daemon read {sent} bytes of an endless layer"
    );
    assert_eq!(store_entries(&d), clean, "after the endless layer");

    // A descriptor declaring more than the limit is refused before downloading.
    r.route(
        "/v2/big/app/manifests/declared",
        Reply::ok(
            OCI_MANIFEST,
            manifest(
                desc(OCI_CONFIG, &cd, Some(cfg.len())),
                vec![desc(LAYER_GZ, &endless_digest, Some(1 << 30))],
            ),
        ),
    );
    let before = r.requests().len();
    let out = pull(&d, &r, &format!("{host}/big/app:declared"));
    refused(&out, &["declares 1073741824 bytes", "--max-layer-size"]);
    assert!(
        r.requests()[before..]
            .iter()
            .all(|q| !q.target.ends_with(&endless_digest)),
        "the oversized layer was requested anyway"
    );
    assert_eq!(store_entries(&d), clean);
}

#[test]
fn gzip_bomb_layer_stops_at_the_layer_limit() {
    let d = Daemon::builder().arg("--max-layer-size").arg("16m").start();
    let r = FakeRegistry::start("127.0.0.1");
    // Control: a small layer pulls under the same limit.
    serve_good_image(&r, "small/app", "v1", b"small");
    let out = pull(&d, &r, &format!("{}/small/app:v1", r.host()));
    assert_eq!(code(&out), 0, "{:?}", String::from_utf8_lossy(&out.stderr));
    let clean = store_entries(&d);

    // 128 MiB of zeros in well under 1 MiB of gzip; every digest is right,
    // so without a limit the pull succeeds and writes all of it.
    let scratch = d.scratch();
    let (gz, diff_id) = gzip_bomb(&scratch, 128 << 20);
    assert!(gz.len() < 2 << 20, "bomb is {} bytes", gz.len());
    let cfg = config(&[&diff_id]);
    let (cd, ld) = (sha256_digest(&cfg), sha256_digest(&gz));
    r.route(
        "/v2/bomb/app/manifests/v1",
        Reply::ok(
            OCI_MANIFEST,
            manifest(
                desc(OCI_CONFIG, &cd, Some(cfg.len())),
                vec![desc(LAYER_GZ, &ld, Some(gz.len()))],
            ),
        ),
    );
    r.route(
        &format!("/v2/bomb/app/blobs/{cd}"),
        Reply::ok("application/octet-stream", cfg),
    );
    r.route(
        &format!("/v2/bomb/app/blobs/{ld}"),
        Reply::ok("application/octet-stream", gz.clone()),
    );
    let out = pull(&d, &r, &format!("{}/bomb/app:v1", r.host()));
    refused(
        &out,
        &["uncompressed", "larger than 16.0 MiB", "--max-layer-size"],
    );
    assert_eq!(store_entries(&d), clean, "the bomb left something behind");
    let images = d.ok(&["images", "--format", "{{.Repository}}"]);
    assert!(!images.contains("bomb"), "{images}");

    // A "file name" of 64 MiB: refused at the tar header, before it is read.
    let (long_gz, long_diff) = long_name_bomb(&scratch, 64 << 20);
    let cfg2 = config(&[&long_diff]);
    let (cd2, ld2) = (sha256_digest(&cfg2), sha256_digest(&long_gz));
    r.route(
        "/v2/bomb/app/manifests/long-name",
        Reply::ok(
            OCI_MANIFEST,
            manifest(
                desc(OCI_CONFIG, &cd2, Some(cfg2.len())),
                vec![desc(LAYER_GZ, &ld2, Some(long_gz.len()))],
            ),
        ),
    );
    r.route(
        &format!("/v2/bomb/app/blobs/{cd2}"),
        Reply::ok("application/octet-stream", cfg2),
    );
    r.route(
        &format!("/v2/bomb/app/blobs/{ld2}"),
        Reply::ok("application/octet-stream", long_gz),
    );
    let out = pull(&d, &r, &format!("{}/bomb/app:long-name", r.host()));
    refused(&out, &["GNU long name", "larger than 1.0 MiB"]);
    assert_eq!(store_entries(&d), clean, "the long name left something");

    // The same bomb in a `docker save` archive: load refuses it too.
    let archive = docker_save_tar(&[
        (
            "manifest.json",
            serde_json::to_vec(&json!([{
                "Config": "config.json",
                "RepoTags": ["bomb:loaded"],
                "Layers": ["layer.tar.gz"],
            }]))
            .expect("manifest"),
        ),
        ("config.json", config(&[&diff_id])),
        ("layer.tar.gz", gz),
    ]);
    let out = d.cli_in(&["load"], Some(&archive));
    refused(&out, &["uncompressed", "larger than 16.0 MiB"]);
    assert_eq!(store_entries(&d), clean, "the loaded bomb left something");
}

/// A tar of (name, content) files.
fn docker_save_tar(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &content[..])
            .expect("tar entry");
    }
    b.into_inner().expect("tar")
}

#[test]
fn archives_with_path_shaped_digests_are_refused() {
    let d = Daemon::start();
    let clean = store_entries(&d);
    let victim = Victim::new(2);
    let tar = layer_tar("x", b"evil");
    let cfg = config(&[&sha256_digest(&tar)]);
    let cd = sha256_digest(&cfg);
    let blob = |data: &[u8]| {
        let digest = sha256_digest(data);
        (
            format!("blobs/sha256/{}", &digest["sha256:".len()..]),
            data.to_vec(),
        )
    };
    let layout = |index: serde_json::Value, blobs: Vec<(String, Vec<u8>)>| {
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            (
                "index.json".into(),
                serde_json::to_vec(&index).expect("index"),
            ),
        ];
        files.extend(blobs);
        let refs: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
        docker_save_tar(&refs)
    };
    // index.json names a manifest by a path.
    let a = layout(
        json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": victim.digest(), "size": 10}
        ]}),
        vec![],
    );
    // The manifest names its layer by `../../x`.
    let m = manifest(
        desc(OCI_CONFIG, &cd, Some(cfg.len())),
        vec![desc(
            "application/vnd.oci.image.layer.v1.tar",
            "sha256:../../x",
            Some(tar.len()),
        )],
    );
    let md = sha256_digest(&m);
    let b = layout(
        json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": md, "size": m.len()}
        ]}),
        vec![blob(&m), blob(&cfg), blob(&tar)],
    );
    // The config names its diff_id by a path.
    let evil_cfg = config(&[&victim.digest()]);
    let c = docker_save_tar(&[
        (
            "manifest.json",
            serde_json::to_vec(&json!([{
                "Config": "config.json",
                "RepoTags": ["evil:cfg"],
                "Layers": ["layer.tar"],
            }]))
            .expect("manifest"),
        ),
        ("config.json", evil_cfg),
        ("layer.tar", tar.clone()),
    ]);
    for (what, archive) in [("index", a), ("manifest", b), ("config", c)] {
        let out = d.cli_in(&["load"], Some(&archive));
        victim.assert_untouched();
        assert_eq!(store_entries(&d), clean, "{what}: the store changed");
        refused(&out, &["invalid digest"]);
    }
}

#[test]
fn the_free_space_reserve_is_kept() {
    // A reserve no disk has: every pull and load must stop before writing.
    let d = Daemon::builder()
        .arg("--min-free-space")
        .arg("1000000t")
        .start();
    let r = FakeRegistry::start("127.0.0.1");
    let clean = store_entries(&d);
    serve_good_image(&r, "good/app", "v1", b"fine");
    let out = pull(&d, &r, &format!("{}/good/app:v1", r.host()));
    refused(&out, &["not enough free space", "--min-free-space"]);
    assert_eq!(store_entries(&d), clean);
    let tar = layer_tar("x", b"fine");
    let archive = docker_save_tar(&[
        (
            "manifest.json",
            serde_json::to_vec(&json!([{
                "Config": "config.json",
                "RepoTags": ["fine:1"],
                "Layers": ["layer.tar"],
            }]))
            .expect("manifest"),
        ),
        ("config.json", config(&[&sha256_digest(&tar)])),
        ("layer.tar", tar),
    ]);
    let out = d.cli_in(&["load"], Some(&archive));
    refused(&out, &["not enough free space"]);
    assert_eq!(store_entries(&d), clean);
}

/// The CLI with this test's own credentials file, holding `user:pass` for `host`.
fn cli_with_credentials(d: &Daemon, host: &str, args: &[&str]) -> Output {
    let dir = d.scratch().join("flotilla-config");
    std::fs::create_dir_all(&dir).expect("config dir");
    // base64("alice:s3cret")
    let auth = "YWxpY2U6czNjcmV0";
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&json!({"auths": {host: {"auth": auth}}})).expect("config"),
    )
    .expect("write config");
    let mut cmd = d.command(args);
    cmd.env("FLOTILLA_CONFIG", &dir);
    run_cmd_timeout(&mut cmd, None, Duration::from_secs(30))
}

#[test]
fn token_realm_on_another_host_gets_no_credentials() {
    let d = Daemon::start();
    let r = FakeRegistry::start("127.0.0.1");
    // "Another host": a different loopback address.
    let elsewhere = FakeRegistry::start("127.0.0.2");
    let same_host = FakeRegistry::start("127.0.0.1");
    for t in [&elsewhere, &same_host] {
        t.route(
            "/token",
            Reply::ok("application/json", br#"{"token":"anon-token"}"#.to_vec()),
        );
    }
    let serve_behind_token = |repo: &str, realm_host: &str| {
        let m = serve_good_image(&r, repo, "v1", repo.as_bytes());
        let challenge = format!(r#"Bearer realm="http://{realm_host}/token",service="fake""#);
        r.route_with_auth(
            &format!("/v2/{repo}/manifests/v1"),
            "Bearer anon-token",
            &challenge,
            Reply::ok(OCI_MANIFEST, m),
        );
    };
    serve_behind_token("far/app", elsewhere.host());
    serve_behind_token("near/app", same_host.host());

    // Realm on another host: the token request carries no credentials, and
    // the user is told.
    let out = cli_with_credentials(
        &d,
        r.host(),
        &[
            "pull",
            "--insecure-registry",
            r.host(),
            &format!("{}/far/app:v1", r.host()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        code(&out),
        0,
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asked = elsewhere.requests();
    assert!(!asked.is_empty(), "the token server was not asked");
    for q in &asked {
        assert_eq!(
            q.header("authorization"),
            None,
            "credentials went to another host: {q:?}"
        );
    }
    assert!(
        stdout.contains("Warning: credentials for")
            && stdout.contains("were not sent to the token server")
            && stdout.contains(elsewhere.host().split(':').next().unwrap_or("")),
        "the user is told: {stdout}"
    );

    // Control: a realm on the registry's own host gets them.
    let out = cli_with_credentials(
        &d,
        r.host(),
        &[
            "pull",
            "--insecure-registry",
            r.host(),
            &format!("{}/near/app:v1", r.host()),
        ],
    );
    assert_eq!(code(&out), 0, "{:?}", String::from_utf8_lossy(&out.stderr));
    let asked = same_host.requests();
    assert!(
        asked
            .iter()
            .any(|q| q.header("authorization") == Some("Basic YWxpY2U6czNjcmV0")),
        "{asked:?}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Warning: credentials"));
}
