//! The multi-host harness itself (`cluster_tests::hosts`): hosts reach each other and nothing
//! else, have their own hostnames, can be cut off and healed; processes can be frozen, killed
//! and restarted; and a dropped lab, or one whose test process was SIGKILLed, leaves nothing.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_tests::hosts::{sweep_stale_labs, Host, Lab, Proc};
use cluster_tests::poll_until;

const T: Duration = Duration::from_secs(10);
const BUSYBOX: &str = "/bin/busybox";
/// Set on the child test process that makes a lab and is then SIGKILLed.
const CRASH_HELPER_ENV: &str = "HOSTS_HARNESS_CRASH_HELPER";
/// Set on the child test process whose test fails while it holds a lab.
const PANIC_HELPER_ENV: &str = "HOSTS_HARNESS_PANIC_HELPER";

/// A TCP server on `host` answering every connection with `reply` (busybox nc -ll -e).
fn echo_server(host: &Host, name: &str, port: u16, reply: &str) -> Proc {
    let port_s = port.to_string();
    let p = host.spawn(
        name,
        BUSYBOX,
        &["nc", "-ll", "-p", &port_s, "-e", BUSYBOX, "echo", reply],
        &[],
    );
    p.wait_listening(port, T);
    p
}

/// What `from` reads from a TCP connection to `to:port` (1 s connect timeout), or the error.
fn connect(from: &Host, to: &Host, port: u16) -> Result<String, String> {
    let out = from.run(
        BUSYBOX,
        &["nc", "-w", "1", &to.addr().to_string(), &port.to_string()],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `pid` is a live process (a zombie waiting for a reaper is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s[s.rfind(')').unwrap() + 1..].trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

/// Live processes in the namespace whose file is `ns` (`(dev, inode)` from before deletion).
fn pids_in_ns(ns: (u64, u64)) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| p.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            ["net", "uts"].iter().any(|kind| {
                std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
                    .is_ok_and(|m| (m.dev(), m.ino()) == ns)
            })
        })
        .collect()
}

fn ns_id(path: &std::path::Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

fn mounted(path: &std::path::Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

#[test]
fn hosts_reach_each_other_over_tcp_and_have_their_own_hostnames() {
    let lab = Lab::with_hosts(&["alpha", "beta"]);
    let (a, b) = (lab.host("alpha"), lab.host("beta"));
    assert_ne!(a.addr(), b.addr());
    for h in lab.hosts() {
        assert_eq!(h.run_ok("hostname", &[]).trim(), h.name());
        let addrs = h.run_ok("ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addrs.contains(&format!("inet {}/24", h.addr())),
            "{}: {addrs}",
            h.name()
        );
        // Only the lab's own addresses, IPv4 only: no IPv6 link-local on the lab's link.
        let v6 = h.run_ok("ip", &["-6", "-o", "addr", "show", "dev", "eth0"]);
        assert!(v6.trim().is_empty(), "{}: IPv6 on eth0: {v6}", h.name());
    }
    // The hostname is also what a process started with spawn sees.
    let hn = b.spawn("hostname", BUSYBOX, &["hostname"], &[]);
    assert!(hn.wait_exit(T).success());
    assert_eq!(hn.log().trim(), "beta");

    echo_server(a, "server", 7000, "from-alpha");
    echo_server(b, "server", 7000, "from-beta");
    assert_eq!(connect(b, a, 7000).as_deref(), Ok("from-alpha"));
    assert_eq!(connect(a, b, 7000).as_deref(), Ok("from-beta"));
    // A host reaches itself on its own address and on loopback.
    assert_eq!(connect(a, a, 7000).as_deref(), Ok("from-alpha"));
    let lo = a.run_ok(BUSYBOX, &["nc", "-w", "1", "127.0.0.1", "7000"]);
    assert_eq!(lo.trim(), "from-alpha");
    // The real host's namespace has no route into the lab either.
    let out = Command::new("ip")
        .args(["route", "get", &a.addr().to_string()])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&out.stdout);
    assert!(
        !route.contains(&format!("dev {}", lab.switch_netns())),
        "{route}"
    );
}

#[test]
fn hosts_have_no_route_out_of_the_lab() {
    let lab = Lab::new(2);
    let h = &lab.hosts()[0];
    let routes = h.run_ok("ip", &["-4", "route", "show", "table", "all"]);
    assert!(!routes.contains("default"), "{routes}");
    // The only non-local route is the lab's own subnet.
    let main = h.run_ok("ip", &["-4", "route", "show"]);
    assert_eq!(
        main.lines().collect::<Vec<_>>().len(),
        1,
        "main table: {main}"
    );
    assert!(main.starts_with(&lab.subnet()), "main table: {main}");
    // Route lookups only: no traffic is sent anywhere outside the lab.
    for outside in ["8.8.8.8", "10.0.0.1", "192.168.1.1", "172.17.0.1"] {
        let out = h.run("ip", &["route", "get", outside]);
        assert!(
            !out.status.success(),
            "{outside} is routable from a lab host: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unreachable"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let peer = lab.hosts()[1].addr().to_string();
    let ok = h.run_ok("ip", &["route", "get", &peer]);
    assert!(ok.contains("dev eth0"), "{ok}");
    let lo = h.run_ok("ip", &["route", "get", "127.0.0.1"]);
    assert!(lo.contains("dev lo"), "{lo}");
    // The host's only links are lo and eth0; the switch has only the bridge and its ports.
    let links = h.run_ok("ip", &["-o", "link"]);
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap())
        .collect();
    assert_eq!(names, ["lo", "eth0"], "{links}");
    let out = Command::new("ip")
        .args(["-n", lab.switch_netns(), "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["br0", "lo", "port1", "port2"], "{links}");
}

#[test]
fn cut_off_isolates_a_host_and_heal_restores_it() {
    let lab = Lab::new(3);
    let [h1, h2, h3] = [&lab.hosts()[0], &lab.hosts()[1], &lab.hosts()[2]];
    let servers: Vec<Proc> = [h1, h2, h3]
        .iter()
        .map(|h| echo_server(h, "server", 7000, h.name()))
        .collect();
    assert_eq!(connect(h1, h2, 7000).as_deref(), Ok("host2"));

    h2.cut_off();
    h2.cut_off(); // idempotent
    assert!(h2.is_cut_off());
    let err = connect(h1, h2, 7000).expect_err("h1 reached the cut-off h2");
    assert!(
        err.contains("timed out") || err.contains("unreachable"),
        "{err}"
    );
    let err = connect(h2, h1, 7000).expect_err("the cut-off h2 reached h1");
    assert!(err.contains("unreachable"), "{err}");
    // The others still reach each other, and h2 still reaches itself.
    assert_eq!(connect(h1, h3, 7000).as_deref(), Ok("host3"));
    assert_eq!(connect(h3, h1, 7000).as_deref(), Ok("host1"));
    let lo = h2.run_ok(BUSYBOX, &["nc", "-w", "1", "127.0.0.1", "7000"]);
    assert_eq!(lo.trim(), "host2");
    // Its processes kept running, their sockets open.
    assert!(servers.iter().all(|s| s.is_running() && s.listens_on(7000)));

    h2.heal();
    h2.heal(); // idempotent
    assert!(!h2.is_cut_off());
    assert_eq!(connect(h1, h2, 7000).as_deref(), Ok("host2"));
    assert_eq!(connect(h2, h3, 7000).as_deref(), Ok("host3"));
}

#[test]
fn processes_stop_cont_kill9_and_restart() {
    let lab = Lab::new(1);
    let h = &lab.hosts()[0];
    let ticker = h.spawn(
        "ticker",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "echo \"start $MARK\"; while true; do echo tick; sleep 0.05; done",
        ],
        &[("MARK", "m1")],
    );
    let pid = ticker.pid();
    // nsenter execs: the PID is the program's own, inside the host's namespaces.
    poll_until(T, "the ticker to exec busybox", || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("busybox"))
    });
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino(),
        std::fs::metadata(h.netns_path()).unwrap().ino()
    );
    ticker.wait_for_log("start m1", T);
    ticker.wait_for_log("tick", T);
    assert!(ticker.is_running());

    ticker.stop();
    assert!(ticker.is_stopped());
    assert!(ticker.is_running(), "a stopped process still runs");
    let frozen = ticker.log();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ticker.log(), frozen, "a stopped process kept writing");
    ticker.cont();
    assert!(!ticker.is_stopped());
    poll_until(T, "the ticker to tick again", || {
        ticker.log().len() > frozen.len()
    });

    ticker.stop();
    ticker.kill9(); // SIGKILL ends a stopped process too
    ticker.kill9(); // idempotent
    assert!(!ticker.is_running());
    assert_eq!(ticker.wait_exit(T).signal(), Some(libc::SIGKILL));
    assert!(!alive(pid));

    ticker.restart();
    let pid2 = ticker.pid();
    assert_ne!(pid2, pid);
    assert!(ticker.is_running());
    let log = ticker.wait_for_log("restart #1", T);
    poll_until(T, "the restarted ticker to start", || {
        ticker.log().matches("start m1").count() == 2
    });
    assert!(log.find("tick").unwrap() < log.find("restart #1").unwrap());

    // A process that ends by itself; restart after a normal exit.
    let once = h.spawn("once", BUSYBOX, &["sh", "-c", "echo bye; exit 3"], &[]);
    assert_eq!(once.wait_exit(T).code(), Some(3));
    assert!(!once.is_running());
    once.restart();
    assert_eq!(once.wait_exit(T).code(), Some(3));
    assert_eq!(once.log().matches("bye").count(), 2);
    assert_eq!(once.log_path(), h.log_dir().join("once.log"));
}

#[test]
fn a_dropped_lab_leaves_nothing_behind() {
    let lab = Lab::new(2);
    let dir = lab.dir().to_path_buf();
    let id = lab.id().to_string();
    let mut nss: Vec<PathBuf> = vec![PathBuf::from("/run/netns").join(lab.switch_netns())];
    let mut uts = Vec::new();
    let mut pids = Vec::new();
    for h in lab.hosts() {
        nss.push(h.netns_path());
        uts.push(h.uts_path().to_path_buf());
        // A tracked process, one left stopped, and an untracked grandchild.
        pids.push(h.spawn("sleeper", BUSYBOX, &["sleep", "1000"], &[]).pid());
        let frozen = h.spawn("frozen", BUSYBOX, &["sleep", "1000"], &[]);
        frozen.stop();
        pids.push(frozen.pid());
        let parent = h.spawn(
            "parent",
            BUSYBOX,
            &["sh", "-c", "sleep 1000 & echo child $!; wait"],
            &[],
        );
        let log = parent.wait_for_log("child ", T);
        let child: i32 = log.split_whitespace().nth(1).unwrap().parse().unwrap();
        pids.extend([parent.pid(), child]);
    }
    h_cut(&lab);
    let ids: Vec<(u64, u64)> = nss.iter().chain(&uts).map(|p| ns_id(p)).collect();
    assert!(pids.iter().all(|p| alive(*p)));
    assert!(uts.iter().all(|u| mounted(u)));
    assert!(netns_list().contains(&id));

    drop(lab);

    let list = netns_list();
    assert!(!list.contains(&id), "namespaces left: {list}");
    for ns in &nss {
        assert!(!ns.exists(), "{} left", ns.display());
    }
    // SIGKILL is delivered at once but a process takes a moment to exit.
    poll_until(T, "the lab's processes gone", || {
        pids.iter().all(|p| !alive(*p)) && ids.iter().all(|ns| pids_in_ns(*ns).is_empty())
    });
    for u in &uts {
        assert!(!mounted(u), "{} still mounted", u.display());
    }
    assert!(!dir.exists(), "{} left", dir.display());
    // The lab's links only ever existed inside its namespaces: none is on the real host.
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    assert!(
        !links
            .lines()
            .any(|l| l.contains(" port1@") || l.contains(" port2@")),
        "{links}"
    );
}

/// Cuts a host off so that cleanup also meets a downed link.
fn h_cut(lab: &Lab) {
    lab.hosts()[0].cut_off();
}

/// Not a test by itself: run by `labs_of_a_killed_test_process_are_swept` in a child process,
/// which it SIGKILLs while this holds a lab with running processes.
#[test]
#[ignore = "helper: run (and SIGKILLed) by labs_of_a_killed_test_process_are_swept"]
fn crash_helper_holds_a_lab() {
    if std::env::var_os(CRASH_HELPER_ENV).is_none() {
        return;
    }
    let lab = Lab::new(2);
    let h = &lab.hosts()[1];
    let p = h.spawn("sleeper", BUSYBOX, &["sleep", "1000"], &[]);
    let q = h.spawn(
        "server",
        BUSYBOX,
        &["nc", "-ll", "-p", "7000", "-e", BUSYBOX, "true"],
        &[],
    );
    q.wait_listening(7000, T);
    println!(
        "LAB {} {} {} {} {} {}",
        lab.id(),
        lab.dir().display(),
        h.netns_path().display(),
        h.uts_path().display(),
        p.pid(),
        q.pid()
    );
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn labs_of_a_killed_test_process_are_swept() {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_helper_holds_a_lab",
            "--ignored",
            "--nocapture",
        ])
        .env(CRASH_HELPER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    while !line.starts_with("LAB ") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the helper ended without making its lab");
        }
    }
    let f: Vec<&str> = line.split_whitespace().collect();
    let (id, dir, netns, uts) = (
        f[1],
        PathBuf::from(f[2]),
        PathBuf::from(f[3]),
        PathBuf::from(f[4]),
    );
    let pids: Vec<i32> = f[5..].iter().map(|p| p.parse().unwrap()).collect();
    // The "crash": our own child, by its PID.
    child.kill().unwrap();
    child.wait().unwrap();
    let ids = [ns_id(&netns), ns_id(&uts)];
    assert!(
        pids.iter().all(|p| alive(*p)),
        "the lab's processes outlive their test"
    );
    assert!(netns_list().contains(id));

    sweep_stale_labs();

    let list = netns_list();
    assert!(!list.contains(id), "namespaces left: {list}");
    // SIGKILL is delivered at once but a process takes a moment to exit.
    poll_until(T, "the lab's processes gone", || {
        pids.iter().all(|p| !alive(*p)) && ids.iter().all(|ns| pids_in_ns(*ns).is_empty())
    });
    assert!(!mounted(&uts), "{} still mounted", uts.display());
    assert!(!dir.exists(), "{} left", dir.display());
}

/// Not a test by itself: run by `a_failing_test_prints_each_process_log_and_cleans_up` in a
/// child process; fails while its lab holds processes that wrote logs.
#[test]
#[ignore = "helper: run by a_failing_test_prints_each_process_log_and_cleans_up"]
fn panic_helper_fails_with_a_lab() {
    if std::env::var_os(PANIC_HELPER_ENV).is_none() {
        return;
    }
    let lab = Lab::with_hosts(&["m1", "w1"]);
    println!("LAB {} {}", lab.id(), lab.dir().display());
    for h in lab.hosts() {
        let script = format!(
            "for i in $(seq 1 100); do echo {}-line-$i; done; sleep 1000",
            h.name()
        );
        let p = h.spawn("chatty", BUSYBOX, &["sh", "-c", &script], &[]);
        p.wait_for_log(&format!("{}-line-100", h.name()), T);
    }
    panic!("the helper fails on purpose");
}

#[test]
fn a_failing_test_prints_each_process_log_and_cleans_up() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "panic_helper_fails_with_a_lab",
            "--ignored",
            "--nocapture",
        ])
        .env(PANIC_HELPER_ENV, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the helper passed\n{stdout}\n{stderr}"
    );
    let lab = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LAB "))
        .unwrap_or_else(|| panic!("no lab in the helper's output:\n{stdout}\n{stderr}"));
    let (id, dir) = lab.split_once(' ').unwrap();
    for host in ["m1", "w1"] {
        assert!(
            stderr.contains(&format!("===== {host}/chatty (")),
            "no log of {host}/chatty:\n{stderr}"
        );
        // The tail: the last 60 lines, not the first ones.
        assert!(stderr.contains(&format!("{host}-line-100")), "{stderr}");
        assert!(stderr.contains(&format!("{host}-line-41\n")), "{stderr}");
        assert!(!stderr.contains(&format!("{host}-line-40\n")), "{stderr}");
    }
    assert!(
        stderr.contains(dir),
        "the log directory is not named:\n{stderr}"
    );
    assert!(!netns_list().contains(id));
    assert!(!std::path::Path::new(dir).exists(), "{dir} left");
}
