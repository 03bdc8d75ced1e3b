use super::*;
use crate::spec::{ContainerSpec, HealthCheck, ServiceSpec};

fn spec_with(f: impl FnOnce(&mut ServiceSpec)) -> ServiceSpec {
    let mut s = ServiceSpec::default();
    s.task.container.image = "busybox".into();
    f(&mut s);
    s
}

#[test]
fn images_follow_the_reference_grammar() {
    for good in ["busybox", "busybox:1.36", "127.0.0.1:5000/team/app:v2"] {
        assert!(image(good).is_ok(), "{good}");
    }
    for (bad, says) in [
        ("Bad Image!!", "lowercase"),
        ("UPPER/case:tag", "lowercase"),
        ("", "empty"),
        ("app:-x", "tag"),
    ] {
        let msg = image(bad).unwrap_err().to_string();
        assert!(msg.contains(says), "{bad}: {msg}");
        assert!(msg.contains("e.g. busybox"), "says what to write: {msg}");
    }
}

#[test]
fn env_entries_need_a_name() {
    assert!(env("A=1").is_ok());
    assert!(env("A=").is_ok());
    assert!(env("BARE").is_ok());
    for bad in ["=novalue", "", "=", "A=\0"] {
        let msg = env(bad).unwrap_err().to_string();
        assert!(msg.contains("KEY=VALUE"), "{bad:?}: {msg}");
    }
}

#[test]
fn hostnames_are_dns_like_and_short() {
    for good in ["", "web", "web-1.example", "a_b", "X1"] {
        assert!(hostname(good).is_ok(), "{good}");
    }
    let too_long = "a".repeat(65);
    for bad in [
        "bad host name",
        "-lead",
        "trail-",
        "a..b",
        ".a",
        "tab\there",
        "ünï",
        too_long.as_str(),
    ] {
        let msg = hostname(bad).unwrap_err().to_string();
        assert!(msg.starts_with("invalid hostname"), "{bad:?}: {msg}");
    }
    assert!(hostname(&"a".repeat(64)).is_ok());
}

#[test]
fn mounts_parse_to_engine_binds() {
    let m = mount("type=bind,src=/srv,dst=/www,readonly").unwrap();
    assert_eq!(m.to_bind(), "/srv:/www:ro");
    assert_eq!(
        mount("type=volume,target=/cache").unwrap().to_bind(),
        "/cache"
    );
    assert_eq!(
        mount("source=v1,target=/v,ro=false").unwrap().to_bind(),
        "v1:/v"
    );
}

#[test]
fn bad_mounts_say_what_is_wrong() {
    for (bad, says) in [
        ("garbage", "not supported"),
        ("type=bind,source=relative/dir,target=/d", "relative"),
        ("type=bind,source=/srv,target=relative", "absolute"),
        ("type=volume,source=data,target=d", "absolute"),
        ("type=volume,source=data", "no target"),
        ("type=volume,source=data,target=/", "cannot be /"),
        ("type=volume,source=a/b,target=/d", "not a path"),
        ("type=volume,source=bad!name,target=/d", "volume name"),
        ("type=bind,target=/d", "source=/"),
        ("type=bind,source=/a:b,target=/d", "':'"),
        ("type=tmpfs,target=/d", "not supported"),
        ("type=volume,target=/d,readonly=maybe", "neither"),
    ] {
        let msg = mount(bad).unwrap_err().to_string();
        assert!(msg.contains(says), "{bad}: {msg}");
        assert!(msg.contains(bad), "names the spec: {msg}");
    }
}

#[test]
fn limits_have_docker_minimums() {
    assert!(memory_limit(0).is_ok());
    assert!(memory_limit(MIN_MEMORY_LIMIT).is_ok());
    let msg = memory_limit(1).unwrap_err().to_string();
    assert!(msg.contains("6MB") && msg.contains("6m"), "{msg}");
    assert!(memory_limit(u64::MAX).is_err());
    assert!(cpu_limit(0).is_ok());
    assert!(cpu_limit(MIN_NANO_CPUS).is_ok());
    assert!(cpu_limit(1).unwrap_err().to_string().contains("0.01"));
}

#[test]
fn durations_and_sizes_are_range_checked() {
    assert!(duration_ms("x", MAX_DURATION_MS).is_ok());
    let msg = duration_ms("--stop-grace-period", MAX_DURATION_MS + 1)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("--stop-grace-period") && msg.contains("292 years"),
        "{msg}"
    );
    assert!(size("x", MAX_BYTES).is_ok());
    assert!(size("x", MAX_BYTES + 1).is_err());
    assert!(stop_timeout_secs(-1).is_ok());
    assert!(stop_timeout_secs(-2).is_err());
    assert!(stop_timeout_secs(i64::MAX).is_err());
}

#[test]
fn health_checks_need_a_known_test() {
    let hc = |cmd: &[&str]| HealthCheck {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert!(health_check(&hc(&["CMD-SHELL", "true"])).is_ok());
    assert!(health_check(&hc(&["NONE"])).is_ok());
    assert!(health_check(&hc(&["CMD-SHELL", " "])).is_err());
    assert!(health_check(&hc(&["RUN", "x"])).is_err());
    let mut long = hc(&["CMD", "true"]);
    long.interval_ms = u64::MAX;
    assert!(health_check(&long)
        .unwrap_err()
        .to_string()
        .contains("--health-interval"));
}

#[test]
fn a_whole_service_spec_is_checked() {
    assert!(service(&spec_with(|_| {})).is_ok());
    let cases: Vec<(ServiceSpec, &str)> = vec![
        (
            spec_with(|s| s.task.container.image = "Bad Image!!".into()),
            "reference",
        ),
        (
            spec_with(|s| s.task.container.env = vec!["=novalue".into()]),
            "environment",
        ),
        (
            spec_with(|s| s.task.container.hostname = "bad host name".into()),
            "hostname",
        ),
        (
            spec_with(|s| s.task.container.mounts = vec!["garbage".into()]),
            "mount",
        ),
        (
            spec_with(|s| s.task.resources.limits.memory_bytes = 1),
            "6MB",
        ),
        (spec_with(|s| s.task.resources.limits.nano_cpus = 5), "0.01"),
        (
            spec_with(|s| s.task.resources.reservations.memory_bytes = u64::MAX),
            "--reserve-memory",
        ),
        (
            spec_with(|s| s.task.container.stop_grace_period_ms = u64::MAX),
            "--stop-grace-period",
        ),
        (
            spec_with(|s| s.task.restart.delay_ms = u64::MAX),
            "--restart-delay",
        ),
        (
            spec_with(|s| s.update.monitor_ms = u64::MAX),
            "--update-monitor",
        ),
        (
            spec_with(|s| s.rollback.delay_ms = u64::MAX),
            "--rollback-delay",
        ),
    ];
    for (spec, says) in cases {
        let msg = service(&spec).unwrap_err().to_string();
        assert!(msg.contains(says), "{says}: {msg}");
    }
    let c = ContainerSpec {
        image: "busybox".into(),
        ..Default::default()
    };
    assert!(container(&c).is_ok());
}
