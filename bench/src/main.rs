//! `flotilla-bench`: benchmarks that print numbers, each run side by side with
//! its peer in the same command. Build with `--release`; run as root.
//!
//! `flotilla-bench start-latency [-n N]`: wall time of
//! `flotilla run --rm busybox /bin/true` from a cached image, of `runc run`
//! and `crun run` on an equivalent bundle (same busybox root, new pid, mount,
//! ipc, uts and network namespaces), and of create+start+wait through the
//! engine API alone. Prints medians and ratios.
//!
//! `flotilla-bench cluster [--runs N] [--writes N]`: leader failover and
//! committed writes per second of three real managers (`cluster.rs`).
//!
//! `flotilla-bench scheduler [--nodes 1000,10000] [--tasks N]`: placement
//! decisions per second of the scheduler core, in process (`scheduler.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_common::proto::engine_client::EngineClient;
use agent_common::proto::{ContainerRef, CreateContainerRequest, RemoveContainerRequest};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod catch_up;
mod cluster;
mod containment;
mod scheduler;
mod services;

#[derive(Parser)]
#[command(
    name = "flotilla-bench",
    about = "Flotilla benchmarks (run as root, built with --release)"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Container start latency: flotilla run --rm vs runc run vs crun run, and the API alone.
    StartLatency {
        /// Runs per contender (at least 20 for a stable median).
        #[arg(short = 'n', long, default_value_t = 30)]
        runs: usize,
        /// Directory with the flotilla and flotilla-worker binaries.
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
    },
    /// Bridge networking: bridged vs unnetworked start, and TCP connect latency and
    /// throughput through a published port vs straight to the container's address.
    Network {
        /// Samples per contender.
        #[arg(short = 'n', long, default_value_t = 30)]
        runs: usize,
        /// Megabytes sent per throughput sample.
        #[arg(long, default_value_t = 200)]
        megabytes: usize,
        /// Directory with the flotilla and flotilla-worker binaries.
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
    },
    /// What the seccomp filter and device rules cost a start: run --rm confined vs
    /// seccomp=unconfined (vs a baseline build), and their in-process costs.
    Containment {
        /// Runs per contender.
        #[arg(short = 'n', long, default_value_t = 30)]
        runs: usize,
        /// Directory with the flotilla and flotilla-worker binaries.
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
        /// Binaries built without seccomp and device rules, for a third column.
        #[arg(long)]
        baseline_bin_dir: Option<PathBuf>,
    },
    /// Three real managers: leader failover time and committed writes per second
    /// (set FLOTILLA_BIN_DIR to the release binaries).
    Cluster {
        /// Failover runs (the median is reported).
        #[arg(short = 'n', long, default_value_t = 11)]
        runs: usize,
        /// Writes per control-API measurement.
        #[arg(long, default_value_t = 500)]
        writes: usize,
    },
    /// Services on real nodes: create N replicas, a worker's death, a drain
    /// (set FLOTILLA_BIN_DIR to the release binaries).
    Services {
        /// Replicas created on one node.
        #[arg(short = 'n', long, default_value_t = 100)]
        replicas: usize,
        /// The cluster's heartbeat period (node-down detection is 3 periods).
        #[arg(long, default_value = "1s")]
        heartbeat: String,
        /// Only measure the creation (bench/swarm-compare.sh).
        #[arg(long = "create-only")]
        create_only: bool,
    },
    /// Raft catch-up in process: a follower that missed N entries, and the
    /// leader's writes/s while it catches up.
    CatchUp {
        /// Entries the follower misses, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
        missed: Vec<usize>,
        /// Writes measured (with the follower up, and while it catches up).
        #[arg(long, default_value_t = 1000)]
        writes: usize,
    },
    /// Scheduler placement decisions per second, in process, on synthetic clusters.
    Scheduler {
        /// Cluster sizes to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
        nodes: Vec<usize>,
        /// Tasks per scheduling batch.
        #[arg(long, default_value_t = 20_000)]
        tasks: usize,
        /// Replicas per service in the batch (tasks of one service are placed as a group).
        #[arg(long, default_value_t = 100)]
        service_size: usize,
        /// Timed runs per scenario (the median is printed).
        #[arg(short = 'n', long, default_value_t = 7)]
        runs: usize,
    },
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A busybox root filesystem (as the Quickstart builds it).
fn make_rootfs(dir: &Path) -> Result<()> {
    let status = Command::new("scripts/make-busybox-image.sh")
        .arg(dir.join("busybox.tar"))
        .status()
        .context("run scripts/make-busybox-image.sh (from the repository root)")?;
    if !status.success() {
        bail!("make-busybox-image.sh failed");
    }
    std::fs::create_dir_all(dir.join("bundle/rootfs"))?;
    let status = Command::new("tar")
        .arg("-xf")
        .arg(dir.join("busybox.tar"))
        .arg("-C")
        .arg(dir.join("bundle/rootfs"))
        .status()?;
    if !status.success() {
        bail!("failed to unpack the busybox rootfs");
    }
    Ok(())
}

/// An OCI bundle for runc/crun: `runc spec` with /bin/true and no terminal.
fn make_bundle(bundle: &Path) -> Result<()> {
    let _ = std::fs::remove_file(bundle.join("config.json"));
    let status = Command::new("runc")
        .arg("spec")
        .current_dir(bundle)
        .status()
        .context("runc spec")?;
    if !status.success() {
        bail!("runc spec failed");
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// `flotilla -H HOST ARGS…` from `bin_dir`.
fn flotilla_cli(bin_dir: &Path, host: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin_dir.join("flotilla"));
    c.arg("-H").arg(host).args(args);
    c
}

/// Imports the busybox rootfs made by [`make_rootfs`] as `busybox:latest`.
fn import_busybox(bin_dir: &Path, host: &str, dir: &Path) -> Result<()> {
    let tar = dir.join("busybox.tar").display().to_string();
    let out = flotilla_cli(bin_dir, host, &["import", &tar, "busybox:latest"]).output()?;
    if !out.status.success() {
        bail!("import failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn time_command(mut cmd: Command) -> Result<Duration> {
    let start = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(elapsed)
}

struct Daemon {
    child: std::process::Child,
    socket: PathBuf,
}

/// The bench daemons' own bridge, removed when they stop.
const BENCH_BRIDGE: &str = "fltbench";

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["link", "del", BENCH_BRIDGE])
            .output();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &format!("flotilla-{BENCH_BRIDGE}")])
            .output();
    }
}

fn start_daemon(bin_dir: &Path, dir: &Path) -> Result<Daemon> {
    let socket = dir.join("flotilla.sock");
    let child = Command::new(bin_dir.join("flotilla-worker"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .arg("--data-root")
        .arg(dir.join("root"))
        .args(["--bridge", BENCH_BRIDGE, "--bip", "10.86.0.1/24"])
        .stderr(std::fs::File::create(dir.join("daemon.log"))?)
        .spawn()
        .context("start flotilla-worker (build with cargo build --release first)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!(
                "flotilla-worker did not create its socket; see {}",
                dir.join("daemon.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Daemon { child, socket })
}

async fn connect(socket: &Path) -> Result<EngineClient<tonic::transport::Channel>> {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    Ok(EngineClient::new(channel))
}

async fn api_run(client: &mut EngineClient<tonic::transport::Channel>) -> Result<Duration> {
    let spec =
        serde_json::json!({"Config": {"Image": "busybox", "Cmd": ["/bin/true"]}, "HostConfig": {}});
    let start = Instant::now();
    let id = client
        .create_container(CreateContainerRequest {
            spec_json: spec.to_string(),
        })
        .await?
        .into_inner()
        .id;
    client
        .start_container(ContainerRef {
            container: id.clone(),
        })
        .await?;
    let code = client
        .wait_container(ContainerRef {
            container: id.clone(),
        })
        .await?
        .into_inner()
        .status_code;
    let elapsed = start.elapsed();
    client
        .remove_container(RemoveContainerRequest {
            container: id,
            force: true,
            volumes: true,
        })
        .await?;
    if code != 0 {
        bail!("container exited {code}");
    }
    Ok(elapsed)
}

fn start_latency(runs: usize, bin_dir: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir()?;
    let dir = tmp.path();
    make_rootfs(dir)?;
    make_bundle(&dir.join("bundle"))?;
    let daemon = start_daemon(bin_dir, dir)?;
    let host = format!("unix://{}", daemon.socket.display());
    let cli = |args: &[&str]| flotilla_cli(bin_dir, &host, args);
    import_busybox(bin_dir, &host, dir)?;

    let mut results: Vec<(&str, Result<Duration>)> = Vec::new();
    let results_ref = &mut results;
    // Interleave the contenders so that drift on the machine hits all alike.
    let mut flotilla = Vec::new();
    let mut runc = Vec::new();
    let mut crun = Vec::new();
    let mut crun_error = None;
    let mut runc_error = None;
    for i in 0..runs + 2 {
        // --network none: a new network namespace with loopback only, as the runc/crun bundle.
        let f = time_command(cli(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "/bin/true",
        ]))?;
        let mut r = Command::new("runc");
        r.args(["run", "--bundle"])
            .arg(dir.join("bundle"))
            .arg(format!("bench-runc-{i}"));
        let r = time_command(r);
        let mut c = Command::new("crun");
        c.args(["run", "--bundle"])
            .arg(dir.join("bundle"))
            .arg(format!("bench-crun-{i}"));
        let c = time_command(c);
        if i < 2 {
            continue; // warm-up
        }
        flotilla.push(f);
        match r {
            Ok(d) => runc.push(d),
            Err(e) => runc_error = Some(e.to_string()),
        }
        match c {
            Ok(d) => crun.push(d),
            Err(e) => crun_error = Some(e.to_string()),
        }
    }
    let mut crun_note = "";
    if crun.is_empty() && crun_error.as_deref().is_some_and(|e| e.contains("hybrid")) {
        // crun 1.8 refuses hybrid cgroup hosts. In a private mount namespace
        // without the cgroup2 mount it sees a plain v1 host and uses cgroupfs,
        // like runc and Flotilla here. Timed inside that namespace with bash's
        // $EPOCHREALTIME around each `crun run` (no extra process per sample).
        crun_note = " [own mount ns without the cgroup2 mount]";
        match crun_in_v1_namespace(&dir.join("bundle"), runs + 2) {
            Ok(mut v) => {
                crun = v.split_off(2.min(v.len()));
            }
            Err(e) => crun_error = Some(e.to_string()),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let api: Result<Duration> = rt.block_on(async {
        let mut client = connect(&daemon.socket).await?;
        let _ = api_run(&mut client).await?;
        let mut v = Vec::new();
        for _ in 0..runs {
            v.push(api_run(&mut client).await?);
        }
        Ok(median(v))
    });
    let fm = median(flotilla);
    results_ref.push(("flotilla run --rm --network none busybox /bin/true", Ok(fm)));
    results_ref.push((
        "runc run (same rootfs, same namespaces)",
        if runc.is_empty() {
            Err(anyhow::anyhow!(runc_error.unwrap_or_default()))
        } else {
            Ok(median(runc))
        },
    ));
    let crun_label = format!("crun run (same bundle){crun_note}");
    results_ref.push((
        crun_label.as_str(),
        if crun.is_empty() {
            Err(anyhow::anyhow!(crun_error.unwrap_or_default()))
        } else {
            Ok(median(crun))
        },
    ));
    results_ref.push(("engine API: create+start+wait (+rm, untimed)", api));
    println!(
        "start latency, median of {runs} runs after 2 warm-ups ({} CPUs)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (name, r) in &results {
        match r {
            Ok(d) => println!(
                "  {name:<48} {:>8.2} ms   flotilla/this = {:.2}",
                ms(*d),
                ms(fm) / ms(*d)
            ),
            Err(e) => println!(
                "  {name:<48}   failed: {}",
                e.to_string().lines().next().unwrap_or("")
            ),
        }
    }
    Ok(())
}

fn crun_in_v1_namespace(bundle: &Path, runs: usize) -> Result<Vec<Duration>> {
    let script = format!(
        "umount /sys/fs/cgroup/unified || exit 9; for i in $(seq 1 {runs}); do s=$EPOCHREALTIME; \
         crun run -b {} bench-crun-ns-$i >/dev/null || exit 1; e=$EPOCHREALTIME; echo \"$s $e\"; done",
        bundle.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .output()
        .context("unshare")?;
    if !out.status.success() {
        bail!(
            "crun in a private mount namespace failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace().map(|p| p.parse::<f64>());
        if let (Some(Ok(a)), Some(Ok(b))) = (parts.next(), parts.next()) {
            v.push(Duration::from_secs_f64((b - a).max(0.0)));
        }
    }
    Ok(v)
}

/// Sends `mb` megabytes to `addr` and returns the rate in MB/s.
fn throughput(addr: &str, mb: usize) -> Result<f64> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr)?;
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    for _ in 0..mb {
        s.write_all(&chunk)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    Ok(mb as f64 / start.elapsed().as_secs_f64())
}

fn connect_time(addr: &str) -> Result<Duration> {
    let start = Instant::now();
    let s = std::net::TcpStream::connect(addr)?;
    let d = start.elapsed();
    drop(s);
    Ok(d)
}

fn network(runs: usize, mb: usize, bin_dir: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir()?;
    let dir = tmp.path();
    make_rootfs(dir)?;
    let daemon = start_daemon(bin_dir, dir)?;
    let host = format!("unix://{}", daemon.socket.display());
    let cli = |args: &[&str]| flotilla_cli(bin_dir, &host, args);
    import_busybox(bin_dir, &host, dir)?;
    // Start latency: bridged (the default) vs --network none, interleaved.
    let (mut bridged, mut none) = (Vec::new(), Vec::new());
    for i in 0..runs + 2 {
        let b = time_command(cli(&["run", "--rm", "busybox", "/bin/true"]))?;
        let n = time_command(cli(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "/bin/true",
        ]))?;
        if i >= 2 {
            bridged.push(b);
            none.push(n);
        }
    }
    // A sink server: one nc per connection, forever.
    let out = cli(&[
        "run",
        "-d",
        "--name",
        "sink",
        "-p",
        "15001:5001",
        "busybox",
        "sh",
        "-c",
        "while true; do nc -l -p 5001 > /dev/null; done",
    ])
    .output()?;
    if !out.status.success() {
        bail!("sink failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let ip = String::from_utf8_lossy(
        &cli(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "sink"])
            .output()?
            .stdout,
    )
    .trim()
    .to_string();
    let direct = format!("{ip}:5001");
    let published = "127.0.0.1:15001".to_string();
    std::thread::sleep(Duration::from_millis(300));
    let (mut c_direct, mut c_pub, mut t_direct, mut t_pub) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        c_direct.push(connect_time(&direct)?);
        std::thread::sleep(Duration::from_millis(20));
        c_pub.push(connect_time(&published)?);
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..5 {
        t_direct.push(throughput(&direct, mb)?);
        std::thread::sleep(Duration::from_millis(50));
        t_pub.push(throughput(&published, mb)?);
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = cli(&["rm", "-f", "sink"]).output();
    let medf = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (bm, nm) = (median(bridged), median(none));
    println!("bridge networking, medians ({runs} runs; throughput: 5 × {mb} MB)");
    println!("  run --rm, bridged (default)      {:>8.2} ms", ms(bm));
    println!(
        "  run --rm, --network none         {:>8.2} ms   bridged/none = {:.2}",
        ms(nm),
        ms(bm) / ms(nm)
    );
    let (cd, cp) = (median(c_direct), median(c_pub));
    println!("  TCP connect, container address   {:>8.3} ms", ms(cd));
    println!(
        "  TCP connect, published port      {:>8.3} ms   published/direct = {:.2}",
        ms(cp),
        ms(cp) / ms(cd)
    );
    let (td, tp) = (medf(t_direct), medf(t_pub));
    println!("  throughput, container address    {td:>8.0} MB/s");
    println!(
        "  throughput, published port       {tp:>8.0} MB/s   published/direct = {:.2}",
        tp / td
    );
    drop(daemon);
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::StartLatency { runs, bin_dir } => start_latency(runs.max(1), &bin_dir),
        Cmd::Network {
            runs,
            megabytes,
            bin_dir,
        } => network(runs.max(1), megabytes.max(1), &bin_dir),
        Cmd::Containment {
            runs,
            bin_dir,
            baseline_bin_dir,
        } => containment::run(runs.max(1), &bin_dir, baseline_bin_dir.as_deref()),
        Cmd::Cluster { runs, writes } => cluster::run(runs.max(1), writes.max(1)),
        Cmd::Services {
            replicas,
            heartbeat,
            create_only,
        } => services::run(replicas.max(1), &heartbeat, create_only),
        Cmd::CatchUp { missed, writes } => catch_up::run(&missed, writes.max(1)),
        Cmd::Scheduler {
            nodes,
            tasks,
            service_size,
            runs,
        } => scheduler::run(&nodes, tasks.max(1), service_size.max(1), runs.max(1)),
    }
}
