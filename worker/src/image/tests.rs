//! Store-level tests on real files: busybox images made by hand, by umoci
//! and read back by skopeo, a real overlay mount for whiteouts.

use super::layer::HashReader;
use super::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::Command;

fn store() -> (tempfile::TempDir, ImageStore) {
    let tmp = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&tmp.path().join("image")).unwrap();
    (tmp, s)
}

/// A busybox root filesystem: static busybox, applet symlinks, passwd/group.
fn rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "ls", "cat", "true", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    for d in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
}

/// Tars a directory (paths relative, symlinks kept).
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

fn busybox_layer() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    rootfs(tmp.path());
    tar_dir(tmp.path())
}

/// A small layer that deletes etc/group and makes tmp opaque, adding a file.
fn whiteout_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("etc/.wh.group", &b""[..]),
        ("tmp/.wh..wh..opq", b""),
        ("tmp/new", b"fresh"),
        ("hello.txt", b"hi"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn config(diff_ids: &[String], cmd: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2024-05-01T10:00:00Z",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "Healthcheck": {"Test": ["CMD", "true"]}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| json!({"created": "2024-05-01T10:00:00Z", "created_by": "ADD"})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn hex(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data).unwrap();
}

fn add_symlink(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, name, target).unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Unmounts on drop, even when the test fails.
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mount_overlay(lowers_bottom_first: &[std::path::PathBuf], at: &Path) -> Mount {
    std::fs::create_dir_all(at).unwrap();
    let lower: Vec<String> = lowers_bottom_first
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!("lowerdir={}", lower.join(":"));
    nix::mount::mount(
        Some("overlay"),
        at,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount overlay {opts}: {e}"));
    Mount(at.to_path_buf())
}

#[test]
fn legacy_docker_save_loads_with_symlinked_layers_and_whiteouts_work_in_overlay() {
    let l1 = busybox_layer();
    let l2 = whiteout_layer();
    let (d1, d2) = (sha256_digest(&l1), sha256_digest(&l2));
    let cfg_a = config(std::slice::from_ref(&d1), &["sh"]);
    let cfg_b = config(&[d1.clone(), d2.clone()], &["cat", "/hello.txt"]);
    let (id_a, id_b) = (sha256_digest(&cfg_a), sha256_digest(&cfg_b));
    let mut b = tar::Builder::new(Vec::new());
    let (la, lb1, lb2) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    for l in [&la, &lb1, &lb2] {
        add_file(&mut b, &format!("{l}/VERSION"), b"1.0");
        add_file(&mut b, &format!("{l}/json"), b"{}");
    }
    add_file(&mut b, &format!("{la}/layer.tar"), &l1);
    add_symlink(
        &mut b,
        &format!("{lb1}/layer.tar"),
        &format!("../{la}/layer.tar"),
    );
    add_file(&mut b, &format!("{lb2}/layer.tar"), &l2);
    add_file(&mut b, &format!("{}.json", hex(&id_a)), &cfg_a);
    add_file(&mut b, &format!("{}.json", hex(&id_b)), &cfg_b);
    let manifest = json!([
        {"Config": format!("{}.json", hex(&id_a)), "RepoTags": ["busybox:latest"], "Layers": [format!("{la}/layer.tar")]},
        {"Config": format!("{}.json", hex(&id_b)), "RepoTags": ["app:v1"], "Layers": [format!("{lb1}/layer.tar"), format!("{lb2}/layer.tar")]},
    ]);
    add_file(&mut b, "manifest.json", manifest.to_string().as_bytes());
    add_file(&mut b, "repositories", br#"{"busybox":{"latest":"aaaa"}}"#);
    let archive = b.into_inner().unwrap();

    let (tmp, s) = store();
    let lines = s.load(&archive[..]).unwrap();
    assert_eq!(
        lines,
        vec!["Loaded image: busybox:latest", "Loaded image: app:v1"]
    );
    let a = s.resolve("busybox").unwrap();
    assert_eq!(a.id, id_a);
    let app = s.resolve("app:v1").unwrap();
    assert_eq!(app.id, id_b);
    assert_eq!(app.runtime_config().cmd.unwrap(), vec!["cat", "/hello.txt"]);
    assert_eq!(
        app.config
            .config
            .as_ref()
            .unwrap()
            .healthcheck
            .as_ref()
            .unwrap()["Test"][1],
        "true"
    );
    let dirs = s.layer_dirs(&app).unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        s.layer_dirs(&a).unwrap()[0],
        dirs[0],
        "the shared layer is unpacked once"
    );
    assert_eq!(std::fs::read_dir(s.layers_root()).unwrap().count(), 2);
    assert!(dirs[0].join("bin/busybox").is_file());
    // Short layer paths (for the overlay option length).
    assert_eq!(dirs[1].file_name().unwrap().len(), 12);

    let mnt = tmp.path().join("mnt");
    let m = mount_overlay(&dirs, &mnt);
    assert!(
        !mnt.join("etc/group").exists(),
        "whiteout did not hide etc/group"
    );
    assert!(mnt.join("etc/passwd").exists());
    assert!(mnt.join("bin/busybox").exists());
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"hi");
    let tmp_entries: Vec<_> = std::fs::read_dir(mnt.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(tmp_entries, vec![std::ffi::OsString::from("new")]);
    drop(m);

    // Reopening reads the same state back.
    let again = ImageStore::open(s.root()).unwrap();
    assert!(again.load_errors().is_empty(), "{:?}", again.load_errors());
    assert_eq!(again.resolve("app:v1").unwrap().id, id_b);
    let rows = again.list();
    assert_eq!(rows.len(), 2);
    assert_eq!(again.history(&app)[0].id, id_b);
    assert_eq!(again.history(&app)[0].size, l2.len() as u64);
    let inspect = again.inspect(&app);
    assert_eq!(inspect["RootFS"]["Layers"][1], d2);
    assert_eq!(inspect["Config"]["Cmd"][0], "cat");
}

/// The Docker ≥ 25 layout: an OCI layout plus manifest.json pointing into blobs.
fn docker25_archive(layers: &[Vec<u8>], cfg: &[u8], tag: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut paths = Vec::new();
    for l in layers {
        let p = format!("blobs/sha256/{}", hex(&sha256_digest(l)));
        add_file(&mut b, &p, l);
        paths.push(p);
    }
    let cfg_path = format!("blobs/sha256/{}", hex(&sha256_digest(cfg)));
    add_file(&mut b, &cfg_path, cfg);
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add_file(
        &mut b,
        "index.json",
        br#"{"schemaVersion":2,"manifests":[]}"#,
    );
    let m = json!([{"Config": cfg_path, "RepoTags": [tag], "Layers": paths}]);
    add_file(&mut b, "manifest.json", m.to_string().as_bytes());
    b.into_inner().unwrap()
}

#[test]
fn docker25_layout_loads_and_digest_mismatches_are_refused() {
    let l1 = busybox_layer();
    let d1 = sha256_digest(&l1);
    let cfg = config(std::slice::from_ref(&d1), &["sh"]);
    let (_tmp, s) = store();
    let lines = s
        .load(&docker25_archive(std::slice::from_ref(&l1), &cfg, "bb:25")[..])
        .unwrap();
    assert_eq!(lines, vec!["Loaded image: bb:25"]);
    assert_eq!(s.resolve("bb:25").unwrap().id, sha256_digest(&cfg));

    // A layer whose content does not match the config's diff_id.
    let (_tmp2, s2) = store();
    let wrong = config(&[format!("sha256:{}", "0".repeat(64))], &["sh"]);
    let err = s2
        .load(&docker25_archive(std::slice::from_ref(&l1), &wrong, "bad:1")[..])
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("diff_id"), "{err}");
    assert!(s2.list().is_empty());
    assert_eq!(
        std::fs::read_dir(s2.layers_root()).unwrap().count(),
        0,
        "no half layer left"
    );
    assert_eq!(
        std::fs::read_dir(s2.root().join("tmp")).unwrap().count(),
        0,
        "temp files cleaned"
    );

    // A failure at the second layer leaves the first one orphaned; prune
    // sweeps it.
    let half = config(&[d1.clone(), format!("sha256:{}", "0".repeat(64))], &["sh"]);
    let err = s2
        .load(&docker25_archive(&[l1.clone(), whiteout_layer()], &half, "half:1")[..])
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_eq!(std::fs::read_dir(s2.layers_root()).unwrap().count(), 1);
    let report = s2.prune(false, &|_: &str| None).unwrap();
    assert_eq!(report.deleted, vec![format!("Deleted: {d1}")]);
    assert_eq!(std::fs::read_dir(s2.layers_root()).unwrap().count(), 0);

    // A blob whose name is not its digest.
    let mut arch = tar::Builder::new(Vec::new());
    let fake = format!("blobs/sha256/{}", "1".repeat(64));
    add_file(&mut arch, &fake, &l1);
    let cfg_path = format!("blobs/sha256/{}", hex(&sha256_digest(&cfg)));
    add_file(&mut arch, &cfg_path, &cfg);
    add_file(
        &mut arch,
        "manifest.json",
        json!([{"Config": cfg_path, "RepoTags": ["x:1"], "Layers": [fake]}])
            .to_string()
            .as_bytes(),
    );
    let err = s2.load(&arch.into_inner().unwrap()[..]).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    // A config whose name is not its digest.
    let mut arch = tar::Builder::new(Vec::new());
    add_file(&mut arch, &format!("{}.json", "2".repeat(64)), &cfg);
    add_file(
        &mut arch,
        "manifest.json",
        json!([{"Config": format!("{}.json", "2".repeat(64)), "Layers": []}])
            .to_string()
            .as_bytes(),
    );
    let err = s2.load(&arch.into_inner().unwrap()[..]).unwrap_err();
    assert!(err.to_string().contains("image config"), "{err}");
}

/// A hand-made OCI layout tar with compressed layers (zstd and gzip).
#[test]
fn oci_layout_tar_with_zstd_and_gzip_layers() {
    let l1 = busybox_layer();
    let l2 = whiteout_layer();
    let z1 = zstd::encode_all(&l1[..], 3).unwrap();
    let g2 = gzip(&l2);
    let cfg = config(&[sha256_digest(&l1), sha256_digest(&l2)], &["sh"]);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&cfg), "size": cfg.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": sha256_digest(&z1), "size": z1.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_digest(&g2), "size": g2.len()},
        ]
    }))
    .unwrap();
    // A nested index with an arm64 decoy and our amd64 manifest.
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "9".repeat(64)), "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256_digest(&manifest), "size": manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }))
    .unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256_digest(&nested), "size": nested.len(),
         "annotations": {"org.opencontainers.image.ref.name": "example/zst:1.0"}}
    ]});
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add_file(&mut b, "index.json", index.to_string().as_bytes());
    for blob in [&z1, &g2, &cfg, &manifest, &nested] {
        add_file(
            &mut b,
            &format!("blobs/sha256/{}", hex(&sha256_digest(blob))),
            blob,
        );
    }
    let archive = gzip(&b.into_inner().unwrap()); // the whole tar gzipped too
    let (tmp, s) = store();
    assert_eq!(
        s.load(&archive[..]).unwrap(),
        vec!["Loaded image: example/zst:1.0"]
    );
    let img = s.resolve("example/zst:1.0").unwrap();
    assert_eq!(
        img.repo_digests,
        vec![format!("example/zst@{}", sha256_digest(&manifest))]
    );
    assert_eq!(
        s.resolve(&format!("example/zst@{}", sha256_digest(&manifest)))
            .unwrap()
            .id,
        img.id
    );
    let dirs = s.layer_dirs(&img).unwrap();
    let mnt = tmp.path().join("mnt");
    let m = mount_overlay(&dirs, &mnt);
    assert!(mnt.join("bin/busybox").exists());
    assert!(!mnt.join("etc/group").exists());
    drop(m);

    // save writes layers uncompressed; the reloaded image has the same id.
    let mut out = Vec::new();
    s.save(&["example/zst:1.0".to_string()], &mut out).unwrap();
    let (_t2, s2) = store();
    assert_eq!(
        s2.load(&out[..]).unwrap(),
        vec!["Loaded image: example/zst:1.0"]
    );
    assert_eq!(s2.resolve("example/zst:1.0").unwrap().id, img.id);
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn umoci_layout_loads_as_dir_and_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:t", layout.display())));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    rootfs(&bundle.join("rootfs"));
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    run(Command::new("umoci")
        .args(["config", "--config.cmd", "sh", "--image"])
        .arg(format!("{}:t", layout.display())));

    let (_s1, s) = store();
    assert_eq!(
        s.load_oci_dir(&layout, Some("umoci/busybox:t")).unwrap(),
        vec!["Loaded image: umoci/busybox:t"]
    );
    let img = s.resolve("umoci/busybox:t").unwrap();
    assert_eq!(img.runtime_config().cmd.unwrap(), vec!["sh"]);
    let dirs = s.layer_dirs(&img).unwrap();
    assert!(dirs.last().unwrap().join("bin/busybox").is_file());
    let rec = s
        .layer_record(img.config.rootfs.diff_ids.last().unwrap())
        .unwrap();
    assert_eq!(rec.compression, "gzip", "umoci writes gzip layers");

    // The same layout as a tar (bare tag annotation "t" names t:latest).
    let tarball = tmp.path().join("oci.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    let (_s2, s2) = store();
    let lines = s2.load(std::fs::File::open(&tarball).unwrap()).unwrap();
    assert_eq!(lines, vec!["Loaded image: t:latest"]);
    assert_eq!(s2.resolve("t").unwrap().id, img.id);
}

#[test]
fn save_is_read_by_skopeo_with_the_same_diff_ids() {
    let (tmp, s) = store();
    let l1 = busybox_layer();
    let l2 = whiteout_layer();
    let cfg = config(&[sha256_digest(&l1), sha256_digest(&l2)], &["sh"]);
    s.load(&docker25_archive(&[l1, l2], &cfg, "skopeo/test:1")[..])
        .unwrap();
    let img = s.resolve("skopeo/test:1").unwrap();
    let archive = tmp.path().join("saved.tar");
    s.save(
        &["skopeo/test:1".to_string()],
        std::fs::File::create(&archive).unwrap(),
    )
    .unwrap();
    let oci = tmp.path().join("ocidir");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("oci:{}:copied", oci.display())));
    // Read what skopeo wrote, independently of our loader.
    let index: Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| std::fs::read(oci.join("blobs/sha256").join(hex(d))).unwrap();
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!(img.config.rootfs.diff_ids)
    );
    // And the layout skopeo wrote loads back into a store with the same id.
    let (_t2, s2) = store();
    assert_eq!(
        s2.load_oci_dir(&oci, None).unwrap(),
        vec!["Loaded image: copied:latest"]
    );
    assert_eq!(
        s2.resolve("copied").unwrap().config.rootfs.diff_ids,
        img.config.rootfs.diff_ids
    );
}

#[test]
fn import_with_changes_then_commit_an_upper_dir() {
    let (tmp, s) = store();
    let gz = gzip(&busybox_layer());
    let changes: Vec<String> = [
        "CMD echo hello",
        "ENV A=1",
        "EXPOSE 8080",
        "WORKDIR /srv",
        "USER nobody",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let id = s
        .import(&gz[..], Some("imported:v1"), &changes, "")
        .unwrap();
    let img = s.resolve("imported:v1").unwrap();
    assert_eq!(img.id, id);
    let rc = img.runtime_config();
    assert_eq!(rc.cmd.unwrap(), vec!["/bin/sh", "-c", "echo hello"]);
    assert_eq!(rc.env.unwrap(), vec!["A=1"]);
    assert!(rc.exposed_ports.unwrap().contains_key("8080/tcp"));
    assert_eq!(
        (rc.working_dir.as_str(), rc.user.as_str()),
        ("/srv", "nobody")
    );
    assert_eq!(
        img.config.history[0].comment.as_deref(),
        Some("Imported from -")
    );
    // The id is the digest of the stored config bytes.
    assert_eq!(sha256_digest(&img.raw_config), id);
    // Short ids resolve.
    assert_eq!(s.resolve(&hex(&id)[..12]).unwrap().id, id);
    assert_eq!(
        s.resolve(&format!("sha256:{}", &hex(&id)[..8])).unwrap().id,
        id
    );
    let err = s
        .import(&gz[..], None, &["RUN x".to_string()], "")
        .unwrap_err();
    assert!(matches!(err, ImageError::BadChange { .. }), "{err}");

    // commit: an upper dir with a new file, a whiteout and an opaque dir.
    let upper = tmp.path().join("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::create_dir_all(upper.join("tmp")).unwrap();
    std::fs::write(upper.join("etc/motd"), "hi\n").unwrap();
    nix::sys::stat::mknod(
        &upper.join("etc/group"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    xattr::set(upper.join("tmp"), layer::OPAQUE_XATTR, b"y").unwrap();
    let lowers = s.layer_dirs(&img).unwrap();
    let changes = layer::diff_changes(&upper, &lowers).unwrap();
    let shown: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect();
    assert_eq!(shown, ["C /etc", "D /etc/group", "A /etc/motd", "C /tmp"]);
    let mut rc = img.runtime_config();
    rc.cmd = Some(vec!["cat".into(), "/etc/motd".into()]);
    let cid = s
        .commit(Some(&img), &upper, rc, Some("committed"), "my change", "me")
        .unwrap();
    let c = s.resolve("committed:latest").unwrap();
    assert_eq!(c.id, cid);
    assert_eq!(c.config.rootfs.diff_ids.len(), 2);
    assert_eq!(
        c.config.history.last().unwrap().comment.as_deref(),
        Some("my change")
    );
    assert_eq!(c.config.author.as_deref(), Some("me"));
    let dirs = s.layer_dirs(&c).unwrap();
    let mnt = tmp.path().join("mnt");
    let m = mount_overlay(&dirs, &mnt);
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/motd")).unwrap(),
        "hi\n"
    );
    assert!(!mnt.join("etc/group").exists());
    assert!(mnt.join("etc/passwd").exists());
    drop(m);
    assert_eq!(s.history(&c).len(), 2);
    assert_eq!(s.history(&c)[0].comment, "my change");
}

#[test]
fn tag_rmi_prune_follow_docker_rules() {
    let (_tmp, s) = store();
    let layer = busybox_layer();
    let id = s.import(&layer[..], Some("a:1"), &[], "").unwrap();
    s.tag("a:1", "a:2").unwrap();
    s.tag(&id, "b").unwrap();
    assert_eq!(
        s.resolve("b:latest").unwrap().repo_tags,
        vec!["a:1", "a:2", "b:latest"]
    );
    let nobody = |_: &str| None;
    let used = |i: &str| (i == id).then(|| "c0ffee1234567890".to_string());
    // One of several tags: only untagged.
    assert_eq!(
        s.remove("a:1", false, &nobody).unwrap(),
        vec!["Untagged: a:1"]
    );
    // By id with tags in two repositories: needs -f.
    let err = s.remove(&id, false, &nobody).unwrap_err();
    assert!(matches!(err, ImageError::MultipleTags { .. }), "{err}");
    s.remove("a:2", false, &nobody).unwrap();
    // Last tag of an image a container uses: refused, then forced = untag only.
    let err = s.remove("b", false, &used).unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "image is being used by container c0ffee123456 (use -f to force)"
    );
    assert_eq!(
        s.remove("b", true, &used).unwrap(),
        vec!["Untagged: b:latest"]
    );
    let rows = s.list();
    assert_eq!(
        (
            rows.len(),
            rows[0].repository.as_str(),
            rows[0].tag.as_str()
        ),
        (1, "<none>", "<none>")
    );
    // Prune keeps what is in use, then removes it and its layer.
    assert!(s.prune(false, &used).unwrap().deleted.is_empty());
    let layer_dir = s.layer_dirs(&s.resolve(&id).unwrap()).unwrap()[0].clone();
    let report = s.prune(false, &nobody).unwrap();
    assert!(
        report.deleted.contains(&format!("Deleted: {id}")),
        "{report:?}"
    );
    assert!(report.space_reclaimed >= layer.len() as u64);
    assert!(!layer_dir.exists());
    assert!(s.resolve(&id).unwrap_err().is_not_found());
    assert_eq!(
        s.resolve("nothere").unwrap_err().to_string(),
        "No such image: nothere:latest"
    );

    // A layer shared by two images stays until the last one goes.
    let i1 = s.import(&layer[..], Some("x:1"), &[], "").unwrap();
    let i2 = s
        .import(&layer[..], Some("y:1"), &["CMD sh".to_string()], "")
        .unwrap();
    assert_ne!(i1, i2);
    let dir = s.layer_dirs(&s.resolve("x:1").unwrap()).unwrap()[0].clone();
    let out = s.remove("x:1", false, &nobody).unwrap();
    assert_eq!(
        out,
        vec!["Untagged: x:1".to_string(), format!("Deleted: {i1}")]
    );
    assert!(dir.exists());
    let out = s.remove("y:1", false, &nobody).unwrap();
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(!dir.exists());
    // prune -a removes tagged images no container uses.
    s.import(&layer[..], Some("z:1"), &[], "").unwrap();
    let report = s.prune(true, &nobody).unwrap();
    assert_eq!(report.deleted[0], "Untagged: z:1");
    assert!(s.list().is_empty());
}

#[test]
fn ambiguous_prefix_is_explained() {
    let (_tmp, s) = store();
    let mut firsts: std::collections::HashMap<char, String> = Default::default();
    for i in 0.. {
        let cfg = serde_json::to_vec(&json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"n": i.to_string()}}})).unwrap();
        let id = s.add_image(&cfg, &[], &[]).unwrap();
        let c = hex(&id).chars().next().unwrap();
        if let Some(other) = firsts.insert(c, id.clone()) {
            let err = s.resolve(&c.to_string()).unwrap_err();
            assert!(
                matches!(err, ImageError::Ambiguous { count: 2, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("ambiguous"));
            assert_eq!(s.resolve(&hex(&other)[..20]).unwrap().id, other);
            break;
        }
    }
}

#[test]
fn corrupt_state_files_are_reported_with_their_path_and_left_alone() {
    let (_tmp, s) = store();
    s.import(&busybox_layer()[..], Some("keep:1"), &[], "")
        .unwrap();
    let root = s.root().to_path_buf();
    drop(s);
    let tags = root.join("repositories.json");
    std::fs::write(&tags, b"{not json").unwrap();
    let rec = std::fs::read_dir(root.join("images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let s = ImageStore::open(&root).unwrap();
    let errors = s.load_errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&tags.display().to_string())),
        "{errors:?}"
    );
    // The image record itself is fine; corrupt it too.
    drop(s);
    std::fs::write(&rec, b"[").unwrap();
    let s = ImageStore::open(&root).unwrap();
    let errors = s.load_errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&rec.display().to_string())),
        "{errors:?}"
    );
    let err = s
        .import(&busybox_layer()[..], Some("new:1"), &[], "")
        .unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("repositories.json"), "{err}");
    assert_eq!(
        std::fs::read(&tags).unwrap(),
        b"{not json",
        "corrupt file was overwritten"
    );
    assert_eq!(std::fs::read(&rec).unwrap(), b"[");
}

#[test]
fn hash_reader_counts_trailing_bytes() {
    let data = vec![7u8; 5000];
    let mut r = HashReader::new(&data[..]);
    let mut first = [0u8; 10];
    std::io::Read::read_exact(&mut r, &mut first).unwrap();
    let (d, n) = r.finish().unwrap();
    assert_eq!((d, n), (sha256_digest(&data), 5000));
}
