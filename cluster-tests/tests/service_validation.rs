//! Specs no node could run are refused when the service is created (or
//! updated), with a message that says what was wrong; nothing is stored. The
//! manager checks them with the engine's own rules (`agent_common::validate`),
//! so what it stores every node accepts. Also: counts, CPUs, sizes and
//! durations are read as values even when negative, and refused with the
//! real reason; durations and sizes are range-checked instead of wrapping.

use std::time::Duration;

use cluster_tests::cluster::ClusterLab;
use cluster_tests::poll_until;

const T: Duration = Duration::from_secs(60);

fn service_names(c: &ClusterLab) -> Vec<String> {
    c.cli("m1", &["service", "ls", "-q"])
        .ok("service ls")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `service create` with `flags` is refused with a short message holding
/// every one of `mentions`, and no service is stored.
fn refused_create(c: &ClusterLab, flags: &[&str], image: &str, mentions: &[&str]) {
    let mut args = vec!["service", "create", "--detach", "--name", "bad"];
    args.extend_from_slice(flags);
    args.push(image);
    args.extend_from_slice(&["sleep", "1000"]);
    let out = c.cli("m1", &args);
    assert_ne!(
        out.code, 0,
        "flotilla {args:?} was accepted:\n{}{}",
        out.stdout, out.stderr
    );
    let lower = out.stderr.to_lowercase();
    for m in mentions {
        assert!(
            lower.contains(&m.to_lowercase()),
            "flotilla {args:?}: the error mentions {m:?}: {}",
            out.stderr
        );
    }
    assert!(
        !out.stderr.contains("unexpected argument"),
        "a value read as a flag: {}",
        out.stderr
    );
    assert!(
        out.stderr.trim().lines().count() <= 4,
        "a short message, not a dump: {}",
        out.stderr
    );
    assert_eq!(
        service_names(c),
        Vec::<String>::new(),
        "flotilla {args:?} stored a service"
    );
}

#[test]
fn unrunnable_specs_are_refused_at_create_and_nothing_is_stored() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1"], "300ms");
    c.init("m1");
    poll_until(T, "m1 ready with its resources", || {
        c.nodes("m1", false).iter().any(|n| n["Status"] == "ready")
    });

    // The engine's rules, checked by the manager.
    let cases: &[(&[&str], &str, &[&str])] = &[
        (&["--mount", "garbage"], "busybox", &["mount", "garbage"]),
        (
            &["--mount", "type=bind,source=relative/dir,target=/data"],
            "busybox",
            &["relative", "absolute"],
        ),
        (
            &["--mount", "type=bind,source=/srv,target=data"],
            "busybox",
            &["target", "absolute"],
        ),
        (&[], "Bad Image!!", &["reference", "lowercase"]),
        (&[], "UPPER/case:tag", &["reference", "lowercase"]),
        (
            &["-e", "=novalue"],
            "busybox",
            &["environment", "KEY=VALUE"],
        ),
        (&["--limit-memory", "1"], "busybox", &["memory", "6MB"]),
        (
            &["--hostname", "bad host name"],
            "busybox",
            &["hostname", "no spaces"],
        ),
        // More than any node has: no node could ever run it.
        (
            &["--reserve-memory", "1000t"],
            "busybox",
            &["reserve-memory", "more than any node"],
        ),
        (
            &["--limit-cpu", "100000"],
            "busybox",
            &["limit-cpu", "more than any node"],
        ),
        // Ranges: refused, not wrapped.
        (
            &["--stop-grace-period", "99999999999999h"],
            "busybox",
            &["at most"],
        ),
        (&["--reserve-memory", "9999999p"], "busybox", &["at most"]),
        // Negative numbers are values, refused for being negative.
        (&["--replicas", "-1"], "busybox", &["negative"]),
        (&["--limit-cpu", "-1"], "busybox", &["negative"]),
        (&["--restart-delay", "-5s"], "busybox", &["negative"]),
        (&["--limit-memory", "-1m"], "busybox", &["negative"]),
        (
            &["--update-max-failure-ratio", "-0.5"],
            "busybox",
            &["between 0 and 1"],
        ),
        // The size error names every unit it accepts.
        (
            &["--reserve-memory", "12x"],
            "busybox",
            &["b, k, m, g, t or p"],
        ),
    ];
    for (flags, image, mentions) in cases {
        refused_create(&c, flags, image, mentions);
    }

    // Updates are checked the same way, and leave the service as it was.
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "good",
            "--replicas",
            "0",
            "busybox",
            "sleep",
            "1000",
        ],
    )
    .ok("create good");
    let before = c
        .cli("m1", &["service", "inspect", "good"])
        .ok("inspect good");
    for flags in [
        &["--hostname", "bad host name"][..],
        &["--image", "Bad Image!!"][..],
        &["--limit-memory", "1"][..],
        &["--env", "=x"][..],
        &["--mount", "type=bind,source=rel,target=/d"][..],
    ] {
        let mut args = vec!["service", "update", "--detach"];
        args.extend_from_slice(flags);
        args.push("good");
        let out = c.cli("m1", &args);
        assert_ne!(
            out.code, 0,
            "flotilla {args:?} was accepted: {}",
            out.stdout
        );
    }
    let after = c
        .cli("m1", &["service", "inspect", "good"])
        .ok("inspect good");
    assert_eq!(before, after, "a refused update changed the service");
    assert_eq!(service_names(&c).len(), 1);
}
