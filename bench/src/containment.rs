//! `flotilla-bench containment`: what the seccomp filter and the device rules cost a container
//! start. Through the CLI, interleaved: `run --rm` with the defaults (seccomp + device rules)
//! and with `--security-opt seccomp=unconfined`; with `--baseline-bin-dir`, also the binaries
//! of a build without either (e.g. the commit before they landed). In process: compiling the
//! default profile, and writing the device rules (v1 files; v2 program load + attach).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{flotilla_cli, import_busybox, make_rootfs, median, ms, start_daemon, time_command};

fn run_cmd(bin_dir: &Path, host: &str, extra: &[&str]) -> std::process::Command {
    let mut args = vec!["run", "--rm", "--network", "none"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["busybox", "/bin/true"]);
    flotilla_cli(bin_dir, host, &args)
}

/// Times `f` `runs` times (after one warm-up) and returns the median.
fn time_in_process(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(median(v))
}

/// A scratch cgroup directory under `base`, removed on drop.
struct ScratchCgroup(std::path::PathBuf);

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn device_rule_costs(runs: usize) -> Result<()> {
    use worker::runtime::cgroups::Layout;
    use worker::runtime::devices;
    let layout = Layout::detect().context("cgroup layout")?;
    let rules = devices::default_rules();
    if let Some((_, mount)) = layout.v1.iter().find(|(c, _)| c == "devices") {
        let mut n = 0;
        let d = time_in_process(runs, || {
            n += 1;
            let dir = ScratchCgroup(mount.join(format!("flotilla-bench-dev-{n}")));
            std::fs::create_dir(&dir.0)?;
            devices::apply_v1(&dir.0, &rules, true)?;
            Ok(())
        })?;
        println!(
            "  v1 devices: mkdir + deny + {} allow lines        {:>8.3} ms (at sandbox creation, off the start path)",
            rules.len(),
            ms(d)
        );
        let dir = ScratchCgroup(mount.join("flotilla-bench-dev-go"));
        std::fs::create_dir(&dir.0)?;
        devices::apply_v1(&dir.0, &rules, true)?;
        let d = time_in_process(runs, || Ok(devices::apply_v1(&dir.0, &rules, false)?))?;
        println!(
            "  v1 devices: {} allow lines at start                {:>8.3} ms",
            rules.len(),
            ms(d)
        );
    }
    if let Some(unified) = &layout.unified {
        let mut n = 0;
        let d = time_in_process(runs, || {
            n += 1;
            let dir = ScratchCgroup(unified.join(format!("flotilla-bench-dev-{n}")));
            std::fs::create_dir(&dir.0)?;
            devices::apply_v2(&dir.0, &rules)?;
            Ok(())
        })?;
        println!(
            "  v2 devices: mkdir + BPF load + attach ({} insns)     {:>8.3} ms",
            devices::program(&rules).len(),
            ms(d)
        );
    }
    Ok(())
}

pub fn run(runs: usize, bin_dir: &Path, baseline: Option<&Path>) -> Result<()> {
    use worker::runtime::{seccomp, spec};
    let caps: Vec<String> = spec::DEFAULT_CAPABILITIES
        .iter()
        .map(|s| s.to_string())
        .collect();
    println!("In process (this binary's build):");
    let resolved = seccomp::resolve(&seccomp::default_profile(), &caps)?;
    let d = time_in_process(runs, || {
        seccomp::compile(&resolved)?;
        Ok(())
    })?;
    let sizes: Vec<usize> = seccomp::compile(&resolved)?
        .programs
        .iter()
        .map(|p| p.len())
        .collect();
    println!(
        "  seccomp: compile Docker's default profile {sizes:?} insns {:>8.3} ms",
        ms(d)
    );
    let compiled = seccomp::compile(&resolved)?;
    let d = time_in_process(runs, || {
        seccomp::time_install(&compiled)?;
        Ok(())
    })?;
    let mut installs: Vec<Duration> = (0..runs)
        .map(|_| seccomp::time_install(&compiled))
        .collect::<std::io::Result<_>>()?;
    installs.sort();
    println!(
        "  seccomp: install it (kernel: check, JIT, cache), in a fork {:>8.3} ms (fork+wait {:.3} ms)",
        ms(installs[installs.len() / 2]),
        ms(d)
    );
    // The same without the i386 section: what the 32-bit rules cost.
    let mut native_only = resolved.clone();
    native_only
        .architectures
        .retain(|a| a == "SCMP_ARCH_X86_64");
    let compiled = seccomp::compile(&native_only)?;
    let mut installs: Vec<Duration> = (0..runs)
        .map(|_| seccomp::time_install(&compiled))
        .collect::<std::io::Result<_>>()?;
    installs.sort();
    println!(
        "  seccomp: install, x86_64 section only ({} insns)       {:>8.3} ms",
        compiled.programs[0].len(),
        ms(installs[installs.len() / 2])
    );
    device_rule_costs(runs)?;

    let tmp = tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir()?;
    let dir = tmp.path();
    make_rootfs(dir)?;
    let (mut confined, mut unconfined) = (Vec::new(), Vec::new());
    {
        let daemon = start_daemon(bin_dir, dir)?;
        let host = format!("unix://{}", daemon.socket.display());
        import_busybox(bin_dir, &host, dir)?;
        for i in 0..runs + 2 {
            let c = time_command(run_cmd(bin_dir, &host, &[]))?;
            let u = time_command(run_cmd(
                bin_dir,
                &host,
                &["--security-opt", "seccomp=unconfined"],
            ))?;
            if i >= 2 {
                confined.push(c);
                unconfined.push(u);
            }
        }
    }
    // The baseline daemon uses the same bench bridge, so it runs after the first one stopped.
    let mut baseline_v = Vec::new();
    if let Some(b) = baseline {
        let bdir = dir.join("baseline");
        std::fs::create_dir_all(&bdir)?;
        std::fs::copy(dir.join("busybox.tar"), bdir.join("busybox.tar"))?;
        let daemon = start_daemon(b, &bdir)?;
        let host = format!("unix://{}", daemon.socket.display());
        import_busybox(b, &host, &bdir)?;
        for i in 0..runs + 2 {
            let t = time_command(run_cmd(b, &host, &[]))?;
            if i >= 2 {
                baseline_v.push(t);
            }
        }
    }
    let c = median(confined);
    println!("`flotilla run --rm --network none busybox /bin/true`, medians of {runs}:");
    println!(
        "  default (seccomp + device rules)               {:>8.2} ms",
        ms(c)
    );
    let u = median(unconfined);
    println!(
        "  --security-opt seccomp=unconfined              {:>8.2} ms   default/this = {:.3}",
        ms(u),
        ms(c) / ms(u)
    );
    if !baseline_v.is_empty() {
        let b = median(baseline_v);
        println!(
            "  baseline build (no seccomp, no device rules)   {:>8.2} ms   default/this = {:.3}",
            ms(b),
            ms(c) / ms(b)
        );
    }
    Ok(())
}
