//! Volumes: named volumes outlive containers and are shared, anonymous image VOLUMEs are
//! created and removed with `rm -v`, bind mounts (read-only too), `--volumes-from`, and the
//! `volume` commands.

use std::time::Duration;

use cluster_tests::{busybox_image, busybox_image_with, Daemon};

#[test]
fn named_volume_survives_removal_and_is_shared() {
    let d = Daemon::start();
    let img = busybox_image(&d, "vol");
    assert_eq!(d.ok(&["volume", "create", "keep"]).trim(), "keep");
    d.ok(&[
        "run",
        "--name",
        "writer",
        "-v",
        "keep:/data",
        &img,
        "sh",
        "-c",
        "echo persisted > /data/f",
    ]);
    d.ok(&["rm", "writer"]);
    assert_eq!(d.volume_names(), ["keep"]);
    assert_eq!(
        d.ok(&["run", "--rm", "-v", "keep:/data", &img, "cat", "/data/f"]),
        "persisted\n"
    );
    // The data lives at the volume's Mountpoint on the host.
    let vol: serde_json::Value =
        serde_json::from_str(&d.ok(&["volume", "inspect", "keep"])).expect("volume inspect");
    let mountpoint = vol[0]["Mountpoint"].as_str().expect("Mountpoint");
    assert_eq!(
        std::fs::read_to_string(format!("{mountpoint}/f")).unwrap(),
        "persisted\n"
    );
    assert_eq!(vol[0]["Name"], "keep");
    assert_eq!(vol[0]["Driver"], "local");
    // Two running containers see each other's writes.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "a1",
        "-v",
        "keep:/data",
        &img,
        "sleep",
        "1000",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "a2",
        "-v",
        "keep:/data",
        &img,
        "sleep",
        "1000",
    ]);
    d.ok(&["exec", "a1", "sh", "-c", "echo from-a1 > /data/g"]);
    assert_eq!(d.ok(&["exec", "a2", "cat", "/data/g"]), "from-a1\n");
    // A volume named on `run` that does not exist yet is created.
    d.ok(&["run", "--rm", "-v", "implicit:/x", &img, "true"]);
    assert!(d.volume_names().contains(&"implicit".to_string()));
    let mounts = &d.inspect("a1")["Mounts"];
    assert_eq!(mounts[0]["Type"], "volume", "{mounts}");
    assert_eq!(mounts[0]["Name"], "keep", "{mounts}");
    assert_eq!(mounts[0]["Destination"], "/data", "{mounts}");
}

#[test]
fn anonymous_image_volume_is_created_and_removed_with_rm_v() {
    let d = Daemon::start();
    let img = busybox_image_with(&d, "withvol", &["VOLUME /data"]);
    assert!(d.inspect(&img)["Config"]["Volumes"].get("/data").is_some());
    d.ok(&[
        "run",
        "--name",
        "anon",
        &img,
        "sh",
        "-c",
        "echo a > /data/a",
    ]);
    let mounts = d.inspect("anon")["Mounts"].clone();
    assert_eq!(mounts.as_array().map(Vec::len), Some(1), "{mounts}");
    assert_eq!(mounts[0]["Destination"], "/data");
    let name = mounts[0]["Name"].as_str().expect("volume name").to_string();
    assert_eq!(d.volume_names(), std::slice::from_ref(&name));
    // Plain rm keeps it; rm -v removes it.
    d.ok(&["run", "--name", "anon2", &img, "true"]);
    assert_eq!(d.volume_names().len(), 2);
    d.ok(&["rm", "anon2"]);
    assert_eq!(
        d.volume_names().len(),
        2,
        "rm without -v keeps anonymous volumes"
    );
    d.ok(&["rm", "-v", "anon"]);
    assert!(!d.volume_names().contains(&name), "rm -v removed {name}");
    // --rm removes the anonymous volumes too, as Docker's does.
    let before = d.volume_names();
    d.ok(&["run", "--rm", &img, "true"]);
    assert_eq!(d.volume_names(), before);
}

#[test]
fn bind_mounts_read_write_and_read_only() {
    let d = Daemon::start();
    let img = busybox_image(&d, "bind");
    let host = d.scratch().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in"), "from-host\n").unwrap();
    let rw = format!("{}:/h", host.display());
    let ro = format!("{}:/h:ro", host.display());
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "-v",
            &rw,
            &img,
            "sh",
            "-c",
            "cat /h/in; echo from-ctr > /h/out"
        ]),
        "from-host\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "from-ctr\n"
    );
    let (code, out, err) = d.run3(&[
        "run",
        "--rm",
        "-v",
        &ro,
        &img,
        "sh",
        "-c",
        "cat /h/in; echo x > /h/nope",
    ]);
    assert_ne!(code, 0, "write to a :ro bind fails");
    assert_eq!(out, "from-host\n");
    assert!(err.contains("Read-only"), "{err}");
    assert!(!host.join("nope").exists());
    // A file bind.
    let file = format!("{}:/etc/motd:ro", host.join("in").display());
    assert_eq!(
        d.ok(&["run", "--rm", "-v", &file, &img, "cat", "/etc/motd"]),
        "from-host\n"
    );
    d.ok(&[
        "run", "-d", "--name", "bound", "-v", &ro, &img, "sleep", "100",
    ]);
    let m = &d.inspect("bound")["Mounts"][0];
    assert_eq!(m["Type"], "bind", "{m}");
    assert_eq!(m["RW"], false, "{m}");
}

#[test]
fn volumes_from_mounts_the_same_volumes() {
    let d = Daemon::start();
    let img = busybox_image_with(&d, "vf", &["VOLUME /anon"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "source",
        "-v",
        "named:/named",
        &img,
        "sh",
        "-c",
        "echo n > /named/f; echo a > /anon/f; sleep 1000",
    ]);
    d.wait_logs("source", "source ready", Duration::from_secs(10), |_| true);
    cluster_tests::poll_until(Duration::from_secs(10), "source to write", || {
        d.cli(&["exec", "source", "test", "-f", "/anon/f"])
            .status
            .success()
    });
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "--volumes-from",
            "source",
            &img,
            "cat",
            "/named/f",
            "/anon/f"
        ]),
        "n\na\n"
    );
    let (code, _, _) = d.run3(&[
        "run",
        "--rm",
        "--volumes-from",
        "source:ro",
        &img,
        "touch",
        "/named/x",
    ]);
    assert_ne!(code, 0, "--volumes-from …:ro mounts read-only");
}

#[test]
fn volume_commands() {
    let d = Daemon::start();
    let img = busybox_image(&d, "volcmd");
    d.ok(&["volume", "create", "v1"]);
    d.ok(&["volume", "create", "v2"]);
    assert_eq!(d.volume_names(), ["v1", "v2"]);
    assert!(d.ok(&["volume", "ls"]).contains("v1"));
    // In use: rm is refused and the volume stays.
    d.ok(&[
        "run", "-d", "--name", "user", "-v", "v1:/d", &img, "sleep", "1000",
    ]);
    let err = d.fails(&["volume", "rm", "v1"], 1);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(d.volume_names(), ["v1", "v2"]);
    // Even a stopped container keeps it in use.
    d.ok(&["kill", "user"]);
    d.wait_status("user", "exited", Duration::from_secs(10));
    d.fails(&["volume", "rm", "v1"], 1);
    d.ok(&["rm", "user"]);
    d.ok(&["volume", "rm", "v1"]);
    assert_eq!(d.volume_names(), ["v2"]);
    // rm of a missing volume fails.
    d.fails(&["volume", "rm", "nope"], 1);
    // prune removes unused anonymous volumes (Docker 23+: named ones stay without --all).
    let anon = busybox_image_with(&d, "anonimg", &["VOLUME /x"]);
    d.ok(&["run", "--name", "tmp", &anon, "true"]);
    d.ok(&["rm", "tmp"]);
    assert_eq!(d.volume_names().len(), 2);
    d.ok(&["volume", "prune", "-f"]);
    assert_eq!(d.volume_names(), ["v2"]);
}
