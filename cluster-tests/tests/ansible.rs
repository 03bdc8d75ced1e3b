//! `ansible/` against a lab of real hosts: each lab host runs its own `sshd`
//! (Debian's openssh-server, a throwaway host key and client key, listening on
//! the host's lab address only), and `ansible-playbook` runs on a control host
//! of its own on the same bridge. The playbooks install Flotilla with
//! `flotilla_service_manager=process` (no systemd here), each host with its own
//! binary directory, data root and socket (the hosts share one filesystem).
//!
//! One scenario, in order: site.yml forms a cluster of three managers, a second
//! run changes nothing, a fourth host (a worker) added to the inventory joins
//! on the next run; drain.yml on a host running part of a 6-replica service
//! never lets the running count fall below 6; upgrade.yml with rebuilt
//! binaries restarts every daemon on them while `cluster info` keeps a quorum;
//! leave.yml takes the worker out (gone from `node ls`, its containers
//! stopped). Needs ansible-core, openssh-server and openssh-client
//! (scripts/install-deps.sh).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::hosts::Lab;
use cluster_tests::{bin, poll_for, poll_until};
use serde_json::{json, Value};

/// How long one condition may take to hold.
const T: Duration = Duration::from_secs(120);
/// How long one playbook run may take.
const PLAYBOOK_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one CLI call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// The flotilla hosts (the first three are managers; the last joins later as
/// a worker) and the ansible control host.
const MANAGERS: [&str; 3] = ["m1", "m2", "m3"];
const WORKER: &str = "w1";
const CONTROL: &str = "ctl";
/// What flotilla_bin_src holds.
const BINARIES: [&str; 3] = ["flotilla", "flotilla-manager", "flotilla-worker"];

/// The CLI's result.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the CLI against `socket` (a file: reachable from the test's own
/// namespace); a call still running after [`CLI_TIMEOUT`] is killed.
fn cli(socket: &Path, args: &[&str]) -> Out {
    let child = Command::new(bin("flotilla"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run flotilla");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(Ok(o)) => Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("flotilla {args:?}: {e}"),
        Err(_) => {
            kill(pid);
            Out {
                code: -1,
                stdout: String::new(),
                stderr: format!("flotilla {args:?} did not finish within {CLI_TIMEOUT:?}"),
            }
        }
    }
}

fn cli_ok(socket: &Path, args: &[&str]) -> String {
    let o = cli(socket, args);
    assert!(
        o.code == 0,
        "flotilla {args:?} failed ({}): {}{}",
        o.code,
        o.stdout,
        o.stderr
    );
    o.stdout
}

/// JSON lines (`--format json` of ls commands).
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// SIGKILL to our own child, by PID.
fn kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A lab with sshd on every flotilla host and an inventory for them.
struct AnsibleLab {
    lab: Lab,
    /// The lab's own files: keys, inventory, ansible's temp dirs, logs.
    dir: PathBuf,
    /// The hosts in the inventory, in order.
    inventory_hosts: Mutex<Vec<String>>,
    /// Playbook runs so far (numbers the logs).
    runs: Mutex<u32>,
    bin_src: PathBuf,
}

impl AnsibleLab {
    fn new() -> AnsibleLab {
        for p in ["ansible-playbook", "ssh", "ssh-keygen", "/usr/sbin/sshd"] {
            assert!(
                have(p),
                "{p} is missing: run scripts/install-deps.sh (ansible-core, openssh-server, openssh-client)"
            );
        }
        let mut names: Vec<&str> = MANAGERS.to_vec();
        names.push(WORKER);
        names.push(CONTROL);
        let lab = Lab::with_hosts(&names);
        let dir = lab.dir().join("ansible");
        std::fs::create_dir_all(&dir).expect("mkdir");
        // Throwaway keys: the client's, and one host key for every sshd.
        for key in ["id", "hostkey"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "flotilla-lab", "-f"])
                .arg(dir.join(key))
                .status()
                .expect("ssh-keygen");
            assert!(st.success(), "ssh-keygen {key}");
        }
        // sshd's privilege separation directory (Debian creates it at boot).
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let owner = lab.dir().display().to_string();
        for h in names.iter().filter(|h| **h != CONTROL) {
            let host = lab.host(h);
            let pid_file = host.dir().join("sshd.pid");
            let opts = [
                format!("ListenAddress={}", host.addr()),
                format!("PidFile={}", pid_file.display()),
                format!("AuthorizedKeysFile={}", dir.join("id.pub").display()),
                "PermitRootLogin=prohibit-password".to_string(),
                "PasswordAuthentication=no".to_string(),
                "KbdInteractiveAuthentication=no".to_string(),
                "UsePAM=no".to_string(),
                "StrictModes=no".to_string(),
                "Subsystem=sftp internal-sftp".to_string(),
                // Sessions (and the daemons they start) carry the lab's
                // marker, so the lab's cleanup finds them.
                format!("SetEnv=FLOTILLA_E2E_OWNER={owner}"),
            ];
            let hostkey = dir.join("hostkey").display().to_string();
            let mut args = vec!["-D", "-e", "-f", "/dev/null", "-h", &hostkey];
            for o in &opts {
                args.push("-o");
                args.push(o);
            }
            let sshd = host.spawn("sshd", "/usr/sbin/sshd", &args, &[]);
            sshd.wait_listening(22, T);
        }
        // The binaries without their debug information: the same programs,
        // a tenth of the bytes to copy to every host.
        let bin_src = dir.join("bin-src");
        std::fs::create_dir_all(&bin_src).expect("mkdir");
        for b in BINARIES {
            let st = Command::new("strip")
                .arg("-o")
                .arg(bin_src.join(b))
                .arg(bin(b))
                .status()
                .expect("strip");
            assert!(st.success(), "strip {b}");
        }
        let me = AnsibleLab {
            lab,
            dir,
            inventory_hosts: Mutex::new(MANAGERS.iter().map(|s| s.to_string()).collect()),
            runs: Mutex::new(0),
            bin_src,
        };
        me.write_inventory();
        me
    }

    /// Where a host's daemon keeps its data, socket and binaries.
    fn data_root(&self, host: &str) -> PathBuf {
        self.lab.host(host).dir().join("data")
    }

    fn socket(&self, host: &str) -> PathBuf {
        self.lab.host(host).dir().join("flotilla.sock")
    }

    fn bin_dir(&self, host: &str) -> PathBuf {
        self.lab.host(host).dir().join("bin")
    }

    /// The inventory (YAML's JSON form) for the hosts added so far.
    fn write_inventory(&self) {
        let hosts = self.inventory_hosts.lock().expect("lock").clone();
        let host_vars = |h: &str| {
            let addr = self.lab.host(h).addr().to_string();
            json!({
                "ansible_host": addr,
                "flotilla_advertise_addr": addr,
                "flotilla_bin_dir": self.bin_dir(h),
                "flotilla_data_root": self.data_root(h),
                "flotilla_socket": self.socket(h),
            })
        };
        let group = |members: Vec<&String>| {
            let m: serde_json::Map<String, Value> = members
                .into_iter()
                .map(|h| (h.clone(), host_vars(h)))
                .collect();
            json!({ "hosts": m })
        };
        let inventory = json!({
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "ansible_ssh_private_key_file": self.dir.join("id"),
                    "ansible_ssh_common_args": "-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
                    "flotilla_service_manager": "process",
                    "flotilla_bin_src": self.bin_src,
                    "flotilla_heartbeat_period": "500ms",
                    "flotilla_daemon_flags": ["--sandbox-pool", "0"],
                    "flotilla_wait_timeout": 120,
                },
                "children": {
                    "managers": group(hosts.iter().filter(|h| MANAGERS.contains(&h.as_str())).collect()),
                    "workers": group(hosts.iter().filter(|h| !MANAGERS.contains(&h.as_str())).collect()),
                }
            }
        });
        std::fs::write(
            self.dir.join("inventory.yml"),
            serde_json::to_string_pretty(&inventory).expect("json"),
        )
        .expect("write inventory");
    }

    fn add_host(&self, host: &str) {
        self.inventory_hosts
            .lock()
            .expect("lock")
            .push(host.to_string());
        self.write_inventory();
    }

    /// Runs `ansible-playbook PLAYBOOK args` on the control host; returns the
    /// PLAY RECAP as host -> (changed, failed + unreachable), panicking with
    /// the output's end when the run fails.
    fn playbook(&self, playbook: &str, args: &[&str]) -> BTreeMap<String, (u32, u32)> {
        let n = {
            let mut runs = self.runs.lock().expect("lock");
            *runs += 1;
            *runs
        };
        let log = self.dir.join(format!("run{n}-{playbook}.log"));
        let ansible_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace")
            .join("ansible");
        let home = self.dir.join("home");
        let out = std::fs::File::create(&log).expect("log");
        let started = Instant::now();
        let mut child = self
            .lab
            .host(CONTROL)
            .command("ansible-playbook")
            .current_dir(&ansible_dir)
            .args(["-i", &self.dir.join("inventory.yml").display().to_string()])
            .arg(playbook)
            .args(args)
            .env("ANSIBLE_CONFIG", self.dir.join("none.cfg"))
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", home.join("cp"))
            .env(
                "ANSIBLE_SSH_ARGS",
                "-o ControlMaster=auto -o ControlPersist=60s",
            )
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("ANSIBLE_FORKS", "10")
            .env(
                "ANSIBLE_LOG_PATH",
                self.dir.join(format!("run{n}-{playbook}.timed.log")),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("run ansible-playbook");
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if started.elapsed() > PLAYBOOK_TIMEOUT {
                kill(child.id());
                let _ = child.wait();
                panic!(
                    "{playbook} did not finish within {PLAYBOOK_TIMEOUT:?}:\n{}",
                    tail(&log, 80)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!(
            "{playbook} {args:?}: {status} in {:.1} s (log {})",
            started.elapsed().as_secs_f64(),
            log.display()
        );
        assert!(
            status.success(),
            "{playbook} {args:?} failed ({status}):\n{}",
            tail(&log, 120)
        );
        recap(&text)
    }
}

impl Drop for AnsibleLab {
    /// Removes every container while the daemons still run (container
    /// processes live in namespaces of their own); the lab then kills the
    /// daemons, sshd and ansible's ssh connections.
    fn drop(&mut self) {
        for h in MANAGERS.iter().chain([&WORKER]) {
            let socket = self.socket(h);
            if !socket.exists() {
                continue;
            }
            let ids = cli(&socket, &["ps", "-aq"]);
            let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                cli(&socket, &args);
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `host : ok=N changed=N unreachable=N failed=N …` lines of the PLAY RECAP.
fn recap(text: &str) -> BTreeMap<String, (u32, u32)> {
    let mut out = BTreeMap::new();
    let Some(at) = text.rfind("PLAY RECAP") else {
        return out;
    };
    for line in text[at..].lines().skip(1) {
        let Some((host, counts)) = line.split_once(" : ") else {
            continue;
        };
        let count = |key: &str| -> u32 {
            counts
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        out.insert(
            host.trim().to_string(),
            (count("changed"), count("failed") + count("unreachable")),
        );
    }
    out
}

/// `node ls --format json` from `socket`.
fn nodes(socket: &Path) -> Vec<Value> {
    json_lines(&cli_ok(socket, &["node", "ls", "--format", "json"]))
}

/// Running tasks of `service` on the node with hostname `host`.
fn running_on(socket: &Path, service: &str, host: &str) -> Vec<Value> {
    json_lines(&cli_ok(
        socket,
        &["service", "ps", service, "--format", "json"],
    ))
    .into_iter()
    .filter(|t| {
        t["Node"] == host && t["CurrentState"] == "running" && t["DesiredState"] == "running"
    })
    .collect()
}

/// A background poll of a command until stopped: the values `sample`
/// returned (None: the poll failed), in order.
struct Poller<T: Send + 'static> {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Option<T>>>>,
}

impl<T: Send + 'static> Poller<T> {
    fn start(mut sample: impl FnMut() -> Option<T> + Send + 'static) -> Poller<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                seen.push(sample());
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        Poller {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Option<T>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("poller panicked")
    }
}

/// SHA-256 of a file, with sha256sum.
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The pid in a host's daemon pid file (process mode).
fn daemon_pid(al: &AnsibleLab, host: &str) -> i32 {
    let text = std::fs::read_to_string(al.data_root(host).join("flotilla.pid"))
        .unwrap_or_else(|e| panic!("pid file of {host}: {e}"));
    text.trim().parse().expect("pid")
}

#[test]
fn playbooks_form_drain_upgrade_and_leave_a_cluster() {
    let _serial = cluster_tests::cluster::serial();
    let al = AnsibleLab::new();
    let m1 = al.socket("m1");

    // --- site.yml: three bare hosts become a cluster of three managers. ---
    let recap1 = al.playbook("site.yml", &[]);
    assert_eq!(recap1.len(), 3, "{recap1:?}");
    assert!(
        recap1.values().all(|(_, failed)| *failed == 0),
        "{recap1:?}"
    );
    let ls = nodes(&m1);
    assert_eq!(ls.len(), 3, "{ls:?}");
    for n in &ls {
        assert_eq!(n["Status"], "ready", "{n}");
        assert_eq!(
            n["ManagerStatus"]["Reachability"], "reachable",
            "every host is a reachable manager: {n}"
        );
    }
    let mut hostnames: Vec<&str> = ls.iter().filter_map(|n| n["Hostname"].as_str()).collect();
    hostnames.sort();
    assert_eq!(hostnames, MANAGERS.to_vec());
    // The tokens went through the daemons' environment, never a file here.
    let inventory = std::fs::read_to_string(al.dir.join("inventory.yml")).expect("inventory");
    let token = cli_ok(&m1, &["join-token", "-q", "worker"]);
    assert!(!inventory.contains(token.trim()));

    // A node's drain order: start-first unless set otherwise.
    let drain_order = |host: &str| {
        let out = cli_ok(&m1, &["node", "inspect", host]);
        let v: Value = serde_json::from_str(&out).expect("node inspect json");
        v[0]["DrainOrder"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(drain_order("m3"), "start-first");
    cli_ok(
        &m1,
        &["node", "update", "--drain-order", "stop-first", "m3"],
    );
    assert_eq!(drain_order("m3"), "stop-first");
    cli_ok(
        &m1,
        &["node", "update", "--drain-order", "start-first", "m3"],
    );
    assert_eq!(drain_order("m3"), "start-first");
    assert_ne!(
        cli(&m1, &["node", "update", "--drain-order", "sideways", "m3"]).code,
        0
    );

    // --- A second run changes nothing. ---
    let recap2 = al.playbook("site.yml", &[]);
    assert!(
        recap2.values().all(|c| *c == (0, 0)),
        "second run: {recap2:?}"
    );
    let pids: Vec<i32> = MANAGERS.iter().map(|h| daemon_pid(&al, h)).collect();

    // --- A fourth host added to the inventory joins; the others are left alone. ---
    al.add_host(WORKER);
    let recap3 = al.playbook("site.yml", &[]);
    for h in MANAGERS {
        assert_eq!(recap3.get(h), Some(&(0, 0)), "{h} left alone: {recap3:?}");
    }
    assert!(
        recap3
            .get(WORKER)
            .is_some_and(|(changed, failed)| *changed > 0 && *failed == 0),
        "{recap3:?}"
    );
    assert_eq!(
        MANAGERS
            .iter()
            .map(|h| daemon_pid(&al, h))
            .collect::<Vec<_>>(),
        pids,
        "the managers' daemons were not restarted"
    );
    poll_until(T, "4 ready nodes, w1 a worker", || {
        let ls = nodes(&m1);
        ls.len() == 4
            && ls.iter().all(|n| n["Status"] == "ready")
            && ls
                .iter()
                .any(|n| n["Hostname"] == WORKER && n["ManagerStatus"].is_null())
    });

    // --- drain.yml on a host running part of a 6-replica service. ---
    let hosts: Vec<&str> = MANAGERS.iter().copied().chain([WORKER]).collect();
    for h in &hosts {
        let tar = al.lab.host(h).dir().join("busybox-rootfs.tar");
        cluster_tests::busybox_rootfs_tar(&tar);
        cli_ok(
            &al.socket(h),
            &["import", &tar.display().to_string(), "busybox"],
        );
    }
    cli_ok(
        &m1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--stop-grace-period",
            "1s",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    poll_until(T, "web 6/6, part of it on m2", || {
        let ls = json_lines(&cli_ok(&m1, &["service", "ls", "--format", "json"]));
        ls.iter()
            .any(|s| s["Spec"]["name"] == "web" && s["Running"] == 6)
            && !running_on(&m1, "web", "m2").is_empty()
    });
    let on_m2: Vec<String> = running_on(&m1, "web", "m2")
        .iter()
        .map(|t| t["ID"].as_str().unwrap_or_default().to_string())
        .collect();
    let maintenance = al.dir.join("maintenance.yml");
    let marker = al.dir.join("maintained");
    std::fs::write(
        &maintenance,
        format!(
            "---\n\
             - name: Count the task containers on the host\n  \
               ansible.builtin.command:\n    \
                 argv: \"{{{{ flotilla_cli + ['ps', '-q', '--filter', 'label=com.flotilla.task.id'] }}}}\"\n  \
               register: lab_tasks\n  \
               changed_when: false\n\
             - name: Record the maintenance\n  \
               ansible.builtin.copy:\n    \
                 content: \"{{{{ inventory_hostname }}}} {{{{ lab_tasks.stdout_lines | length }}}}\"\n    \
                 dest: {}\n    \
                 mode: \"0644\"\n",
            marker.display()
        ),
    )
    .expect("maintenance tasks");
    let socket = m1.clone();
    let poll = Poller::start(move || {
        let out = cli(&socket, &["service", "ls", "--format", "json"]);
        (out.code == 0).then(|| {
            json_lines(&out.stdout)
                .iter()
                .find(|s| s["Spec"]["name"] == "web")
                .and_then(|s| s["Running"].as_u64())
                .unwrap_or(0)
        })
    });
    let extra = json!({ "flotilla_maintenance_tasks": [maintenance] }).to_string();
    let recap4 = al.playbook("drain.yml", &["--limit", "m2", "-e", &extra]);
    let counts = poll.finish();
    assert_eq!(recap4.keys().collect::<Vec<_>>(), vec!["m2"], "{recap4:?}");
    let seen: Vec<u64> = counts.iter().flatten().copied().collect();
    assert!(
        counts.iter().all(Option::is_some),
        "every poll answered: {counts:?}"
    );
    let fewest = seen.iter().copied().min().unwrap_or(0);
    eprintln!(
        "drain.yml: {} polls of web's running count, fewest {fewest}, most {}",
        seen.len(),
        seen.iter().copied().max().unwrap_or(0)
    );
    assert!(fewest >= 6, "the running count dipped: {seen:?}");
    assert_eq!(
        std::fs::read_to_string(&marker).expect("maintenance ran"),
        "m2 0",
        "the maintenance ran on m2 with no task left there"
    );
    let tasks = json_lines(&cli_ok(&m1, &["service", "ps", "web", "--format", "json"]));
    for id in &on_m2 {
        let t = tasks
            .iter()
            .find(|t| t["ID"] == id.as_str())
            .expect("task kept");
        assert_eq!(t["DesiredState"], "shutdown", "{t}");
    }
    let m2 = nodes(&m1)
        .into_iter()
        .find(|n| n["Hostname"] == "m2")
        .expect("m2");
    assert_eq!(m2["Availability"], "active", "{m2}");
    assert_eq!(m2["Status"], "ready", "{m2}");

    // --- upgrade.yml with rebuilt binaries (another checksum). ---
    let new_src = al.dir.join("rebuilt");
    std::fs::create_dir_all(&new_src).expect("mkdir");
    for b in BINARIES {
        let dst = new_src.join(b);
        std::fs::copy(al.bin_src.join(b), &dst).expect("copy binary");
        // Bytes after the ELF image change the checksum, not the program.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&dst)
            .expect("open");
        f.write_all(b"\nrebuilt for the upgrade test\n")
            .expect("append");
    }
    let new_sums: BTreeMap<&str, String> = ["flotilla-manager", "flotilla-worker"]
        .into_iter()
        .map(|b| (b, sha256(&new_src.join(b))))
        .collect();
    let before: BTreeMap<&str, i32> = hosts.iter().map(|h| (*h, daemon_pid(&al, h))).collect();
    let manager_sockets: Vec<PathBuf> = MANAGERS.iter().map(|h| al.socket(h)).collect();
    let poll = Poller::start(move || {
        // From the first manager that answers with a leader: how many
        // managers it reports reachable (two of three is a quorum), and how
        // many tasks of web run.
        manager_sockets.iter().find_map(|s| {
            let out = cli(s, &["cluster", "info", "--format", "json"]);
            if out.code != 0 {
                return None;
            }
            let info: Value = serde_json::from_str(&out.stdout).ok()?;
            info["LeaderID"].as_str()?;
            let reachable = info["Managers"]
                .as_array()?
                .iter()
                .filter(|m| m["Reachability"] == "reachable")
                .count();
            let out = cli(s, &["service", "ls", "--format", "json"]);
            let running = json_lines(&out.stdout)
                .iter()
                .find(|s| s["Spec"]["name"] == "web")
                .and_then(|s| s["Running"].as_u64())?;
            Some((reachable, running))
        })
    });
    let extra = json!({ "flotilla_bin_src": new_src }).to_string();
    let recap5 = al.playbook("upgrade.yml", &["-e", &extra]);
    let quorum = poll.finish();
    assert!(
        recap5.values().all(|(_, failed)| *failed == 0),
        "{recap5:?}"
    );
    eprintln!(
        "upgrade.yml: {} polls of cluster info; reachable managers {}; fewest web tasks running {:?}",
        quorum.len(),
        quorum
            .iter()
            .map(|q| q.map_or("-".to_string(), |(n, _)| n.to_string()))
            .collect::<Vec<_>>()
            .join(""),
        quorum.iter().flatten().map(|(_, r)| *r).min()
    );
    assert!(
        quorum.iter().all(|q| q.is_some_and(|(n, _)| n >= 2)),
        "a poll found no leader or fewer than 2 reachable managers: {quorum:?}"
    );
    assert!(
        quorum.iter().flatten().all(|(_, running)| *running >= 6),
        "web lost running tasks during the upgrade: {quorum:?}"
    );
    for h in &hosts {
        let pid = daemon_pid(&al, h);
        assert_ne!(pid, before[h], "{h}'s daemon restarted");
        let daemon = if MANAGERS.contains(h) {
            "flotilla-manager"
        } else {
            "flotilla-worker"
        };
        assert_eq!(
            sha256(Path::new(&format!("/proc/{pid}/exe"))),
            new_sums[daemon],
            "{h} runs the rebuilt {daemon}"
        );
        let version = cli_ok(&al.socket(h), &["version"]);
        assert!(version.contains("Server"), "{h}: {version}");
    }
    poll_until(T, "4 ready nodes after the upgrade", || {
        nodes(&m1).iter().filter(|n| n["Status"] == "ready").count() == 4
    });

    // --- leave.yml takes the worker out. ---
    // The upgrade drained every host in turn; more replicas land on w1 too.
    cli_ok(&m1, &["service", "scale", "web=8"]);
    let w1 = al.socket(WORKER);
    let w1_tasks = poll_for(T, "task containers on w1", || {
        let ids = cli_ok(
            &w1,
            &[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                "label=com.flotilla.task.id",
            ],
        );
        let ids: Vec<String> = ids.split_whitespace().map(str::to_string).collect();
        if ids.is_empty() {
            Err("none".into())
        } else {
            Ok(ids)
        }
    });
    let w1_pids: Vec<(String, i64)> = w1_tasks
        .iter()
        .map(|id| {
            let pid = cli_ok(&w1, &["inspect", "--format", "{{.State.Pid}}", id]);
            (id.clone(), pid.trim().parse().expect("container pid"))
        })
        .collect();
    let w1_daemon = daemon_pid(&al, WORKER);
    let recap7 = al.playbook("leave.yml", &["--limit", WORKER]);
    assert!(
        recap7.values().all(|(_, failed)| *failed == 0),
        "{recap7:?}"
    );
    let ls = nodes(&m1);
    assert!(
        ls.iter().all(|n| n["Hostname"] != WORKER),
        "w1 is gone from node ls: {ls:?}"
    );
    assert_eq!(ls.len(), 3, "{ls:?}");
    assert!(
        !Path::new(&format!("/proc/{w1_daemon}")).exists(),
        "w1's daemon stopped"
    );
    for (id, pid) in &w1_pids {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        assert!(
            !cgroup.contains(id.as_str()),
            "container {id} (pid {pid}) of w1 still runs"
        );
    }
    assert!(!al.data_root(WORKER).join("cluster").exists());
    poll_until(T, "web 8/8 without w1", || {
        json_lines(&cli_ok(&m1, &["service", "ls", "--format", "json"]))
            .iter()
            .any(|s| s["Spec"]["name"] == "web" && s["Running"] == 8)
    });
    cli_ok(&m1, &["service", "rm", "web"]);
}

#[test]
fn ansible_lint_is_clean() {
    assert!(
        have("ansible-lint"),
        "ansible-lint is missing: run scripts/install-deps.sh"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let home = tempfile::tempdir().expect("tempdir");
    // Offline: no collections or requirements fetched; its caches in a
    // directory of its own.
    let out = Command::new("ansible-lint")
        .args(["--offline", "--nocolor", "ansible"])
        .current_dir(root)
        .env("HOME", home.path())
        .env("ANSIBLE_HOME", home.path().join("ansible"))
        .stdin(Stdio::null())
        .output()
        .expect("run ansible-lint");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ansible-lint found problems:\n{text}");
    assert!(text.contains("Passed"), "{text}");
}
