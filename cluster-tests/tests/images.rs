//! Images: import, images, tag, rmi (refused while in use, -f), image inspect, history,
//! save → load into a second daemon, image prune.

use cluster_tests::{busybox_image, busybox_image_with, Daemon};

fn image_rows(d: &Daemon) -> Vec<(String, String)> {
    d.ok(&["images", "--format", "json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("images json line");
            (
                format!(
                    "{}:{}",
                    v["Repository"].as_str().unwrap(),
                    v["Tag"].as_str().unwrap()
                ),
                v["ID"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn import_images_tag_rmi() {
    let d = Daemon::start();
    busybox_image(&d, "base");
    let rows = image_rows(&d);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "base:latest");
    let images = d.ok(&["images"]);
    assert!(images.starts_with("REPOSITORY"), "{images}");
    assert_eq!(d.ok(&["images", "-q"]).trim(), rows[0].1);

    d.ok(&["tag", "base", "other/name:v2"]);
    let rows = image_rows(&d);
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r.1 == rows[0].1),
        "same image ID: {rows:?}"
    );
    assert_eq!(
        d.ok(&["run", "--rm", "other/name:v2", "echo", "tagged"]),
        "tagged\n"
    );

    // rmi of one tag only untags while another tag remains.
    d.ok(&["rmi", "other/name:v2"]);
    assert_eq!(image_rows(&d).len(), 1);
    // rmi is refused while a container (even a stopped one) uses the image.
    d.ok(&["run", "--name", "user", "base", "true"]);
    let err = d.fails(&["rmi", "base"], 1);
    assert!(err.contains("container"), "{err}");
    assert_eq!(image_rows(&d).len(), 1, "still there");
    // -f untags it (it stays as <none> while the container uses it).
    d.ok(&["rmi", "-f", "base"]);
    let rows = image_rows(&d);
    assert!(
        !rows.iter().any(|r| r.0 == "base:latest"),
        "untagged: {rows:?}"
    );
    assert_eq!(
        d.run3(&["run", "--rm", "base", "true"]).0,
        125,
        "the name is gone"
    );
    assert_eq!(d.status("user"), "exited");
    d.ok(&["rm", "user"]);
    // With no user left, the image is removable (by ID now).
    d.fails(&["rmi", "nosuch:tag"], 1);
}

#[test]
fn rmi_removes_an_unused_image() {
    let d = Daemon::start();
    let img = busybox_image(&d, "doomed");
    let id = d.inspect(&img)["Id"].as_str().unwrap().to_string();
    d.ok(&["rmi", &img]);
    assert!(image_rows(&d).is_empty());
    assert_ne!(
        d.run3(&["image", "inspect", &id]).0,
        0,
        "image {id} is gone"
    );
}

#[test]
fn image_inspect_and_history() {
    let d = Daemon::start();
    let img = busybox_image_with(
        &d,
        "described",
        &[
            r#"CMD ["sh"]"#,
            "ENV FOO=bar",
            "WORKDIR /tmp",
            "USER nobody",
            "LABEL a=b",
        ],
    );
    let v = d.inspect(&img);
    assert!(v["Id"].as_str().unwrap().starts_with("sha256:"), "{v}");
    assert_eq!(v["RepoTags"], serde_json::json!(["described:latest"]));
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(v["Config"]["WorkingDir"], "/tmp");
    assert_eq!(v["Config"]["User"], "nobody");
    assert_eq!(v["Config"]["Labels"]["a"], "b");
    assert!(
        v["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "FOO=bar"),
        "{v}"
    );
    assert_eq!(v["RootFS"]["Layers"].as_array().map(Vec::len), Some(1));
    // The image config applies to containers.
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            &img,
            "sh",
            "-c",
            "echo $FOO $(pwd) $(id -un)"
        ]),
        "bar /tmp nobody\n"
    );
    let same: serde_json::Value = serde_json::from_str(&d.ok(&["image", "inspect", &img])).unwrap();
    assert_eq!(same[0]["Id"], v["Id"]);
    let history = d.ok(&["history", &img]);
    assert!(history.starts_with("IMAGE"), "{history}");
    assert_eq!(history.lines().count(), 2, "one layer, one row: {history}");
}

#[test]
fn layers_are_reproducible() {
    // Pinned mtimes and owners: the same rootfs gives the same layer digest, in two daemons.
    let a = Daemon::start();
    let b = Daemon::start();
    busybox_image(&a, "repro");
    busybox_image(&b, "repro");
    assert_eq!(
        a.inspect("repro")["RootFS"]["Layers"],
        b.inspect("repro")["RootFS"]["Layers"]
    );
}

#[test]
fn save_then_load_into_another_daemon() {
    let a = Daemon::start();
    let b = Daemon::start();
    busybox_image_with(&a, "shipped:1", &[r#"CMD ["echo", "shipped"]"#]);
    a.ok(&["tag", "shipped:1", "shipped:alias"]);
    let file = a.scratch().join("images.tar");
    a.ok(&[
        "save",
        "-o",
        file.to_str().unwrap(),
        "shipped:1",
        "shipped:alias",
    ]);
    let out = b.ok(&["load", "-i", file.to_str().unwrap()]);
    assert!(
        out.contains("shipped"),
        "load reports what it loaded: {out}"
    );
    let ida = a.inspect("shipped:1")["Id"].clone();
    assert_eq!(
        b.inspect("shipped:1")["Id"],
        ida,
        "same image ID after the round trip"
    );
    assert_eq!(b.inspect("shipped:alias")["Id"], ida);
    assert_eq!(b.ok(&["run", "--rm", "shipped:1"]), "shipped\n");
    // save to stdout works too, and loads from stdin.
    let out = a.cli(&["save", "shipped:1"]);
    assert!(out.status.success());
    let c = Daemon::start();
    c.ok_in(&["load"], &out.stdout);
    assert_eq!(c.inspect("shipped:1")["Id"], ida);
}

#[test]
fn image_prune_removes_dangling_images() {
    let d = Daemon::start();
    busybox_image_with(&d, "churn", &[r#"CMD ["echo", "one"]"#]);
    let old = d.inspect("churn")["Id"].as_str().unwrap().to_string();
    // Re-importing under the same name leaves the old image dangling.
    busybox_image_with(&d, "churn", &[r#"CMD ["echo", "two"]"#]);
    assert_ne!(d.inspect("churn")["Id"], old.as_str());
    assert_eq!(
        d.run3(&["image", "inspect", &old]).0,
        0,
        "dangling image still there"
    );
    d.ok(&["image", "prune", "-f"]);
    assert_ne!(
        d.run3(&["image", "inspect", &old]).0,
        0,
        "dangling image pruned"
    );
    assert_eq!(
        d.ok(&["run", "--rm", "churn"]),
        "two\n",
        "tagged image kept"
    );
    // prune -a removes unused tagged images too.
    d.ok(&["image", "prune", "-a", "-f"]);
    assert!(image_rows(&d).is_empty());
}
