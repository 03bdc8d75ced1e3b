//! Which device nodes a container may use: Docker's default allow-list plus
//! `--device` additions, enforced by the kernel on both cgroup versions.
//!
//! - cgroup v1: the `devices` controller (`devices.deny` "a", then one
//!   `devices.allow` line per rule).
//! - cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//!   container's cgroup, generated here from the same rules and loaded with
//!   raw `bpf(2)` calls (no C toolchain, no libbpf).
//!
//! Everything not allowed fails with `EPERM` at `open` (and at `mknod` for
//! the `m` right), whoever owns the node and whatever its mode: a device
//! node shipped in an image, or made by container root with `CAP_MKNOD`,
//! stays unusable.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One allow rule: device type, numbers (`None` = any) and rights (`rwm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// 'c' (char), 'b' (block) or 'a' (both).
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// A subset of "rwm".
    pub access: String,
}

impl DeviceRule {
    pub fn new(kind: char, major: Option<u32>, minor: Option<u32>, access: &str) -> DeviceRule {
        DeviceRule {
            kind,
            major,
            minor,
            access: access.to_string(),
        }
    }

    /// The v1 `devices.allow` line: `c 1:3 rwm`, `b *:* m`.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            num(self.major),
            num(self.minor),
            self.access
        )
    }
}

/// Docker's defaults: mknod of any device (but not its use), and the
/// devices every container has: null, zero, full, random, urandom, tty,
/// console, ptmx, and the terminals of its own devpts (136:*).
pub fn default_rules() -> Vec<DeviceRule> {
    let mut rules = vec![
        DeviceRule::new('c', None, None, "m"),
        DeviceRule::new('b', None, None, "m"),
    ];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        rules.push(DeviceRule::new('c', Some(major), Some(minor), "rwm"));
    }
    rules.push(DeviceRule::new('c', Some(136), None, "rwm"));
    rules
}

/// Checks `--device` rights: a non-empty subset of "rwm".
pub fn valid_access(access: &str) -> bool {
    !access.is_empty() && access.chars().all(|c| "rwm".contains(c))
}

/// cgroup v1: deny everything, then allow the rules. Writing "a" to
/// `devices.deny` empties the allow-list of a cgroup without children.
pub fn apply_v1(dir: &Path, rules: &[DeviceRule], reset: bool) -> std::io::Result<()> {
    if reset {
        std::fs::write(dir.join("devices.deny"), "a")?;
    }
    for r in rules {
        std::fs::write(dir.join("devices.allow"), r.v1_line())?;
    }
    Ok(())
}

// eBPF instruction encoding (linux/bpf.h, linux/bpf_common.h).
const BPF_LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const BPF_ALU64_AND_K: u8 = 0x57;
const BPF_ALU64_RSH_K: u8 = 0x77;
const BPF_ALU64_MOV_K: u8 = 0xb7;
const BPF_ALU64_MOV_X: u8 = 0xbf;
const BPF_JMP_JNE_K: u8 = 0x55;
const BPF_EXIT: u8 = 0x95;

/// `struct bpf_cgroup_dev_ctx` access bits and device types.
const BPF_DEVCG_ACC_MKNOD: u32 = 1;
const BPF_DEVCG_ACC_READ: u32 = 2;
const BPF_DEVCG_ACC_WRITE: u32 = 4;
const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

fn access_bits(access: &str) -> u32 {
    access.chars().fold(0, |bits, c| {
        bits | match c {
            'm' => BPF_DEVCG_ACC_MKNOD,
            'r' => BPF_DEVCG_ACC_READ,
            'w' => BPF_DEVCG_ACC_WRITE,
            _ => 0,
        }
    })
}

/// The device program: returns 1 (allow) when a rule matches the request,
/// 0 otherwise. Registers: r2 type, r3 requested access, r4 major, r5 minor.
pub fn program(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(BPF_LDX_MEM_W, 2, 1, 0, 0), // r2 = ctx->access_type
        insn(BPF_ALU64_MOV_X, 3, 2, 0, 0),
        insn(BPF_ALU64_AND_K, 2, 0, 0, 0xffff), // type: low 16 bits
        insn(BPF_ALU64_RSH_K, 3, 0, 0, 16),     // access: high 16 bits
        insn(BPF_LDX_MEM_W, 4, 1, 4, 0),        // r4 = ctx->major
        insn(BPF_LDX_MEM_W, 5, 1, 8, 0),        // r5 = ctx->minor
    ];
    for rule in rules {
        let start = p.len();
        let mut jumps = Vec::new();
        match rule.kind {
            'c' => {
                jumps.push(p.len());
                p.push(insn(BPF_JMP_JNE_K, 2, 0, 0, BPF_DEVCG_DEV_CHAR));
            }
            'b' => {
                jumps.push(p.len());
                p.push(insn(BPF_JMP_JNE_K, 2, 0, 0, BPF_DEVCG_DEV_BLOCK));
            }
            _ => {}
        }
        // Every requested right must be granted: (access & ~granted) == 0.
        let denied = !access_bits(&rule.access) & 0x7;
        if denied != 0 {
            p.push(insn(BPF_ALU64_MOV_X, 6, 3, 0, 0));
            p.push(insn(BPF_ALU64_AND_K, 6, 0, 0, denied as i32));
            jumps.push(p.len());
            p.push(insn(BPF_JMP_JNE_K, 6, 0, 0, 0));
        }
        if let Some(major) = rule.major {
            jumps.push(p.len());
            p.push(insn(BPF_JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            jumps.push(p.len());
            p.push(insn(BPF_JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        p.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, 1));
        p.push(insn(BPF_EXIT, 0, 0, 0, 0));
        let next = p.len();
        for j in jumps {
            p[j].off = (next - j - 1) as i16;
        }
        debug_assert!(next > start);
    }
    p.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(BPF_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`; the kernel treats the
/// fields past the size we pass as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly laid out bpf_attr prefix of the
    // size we pass; the kernel reads (and for some commands writes) only it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads the device program for `rules`; the verifier's log is in the error.
pub fn load(rules: &[DeviceRule]) -> std::io::Result<OwnedFd> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 16 * 1024];
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"flotilla_dev");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            Err(std::io::Error::new(
                e.kind(),
                format!("loading the device program: {e}: {}", text.trim()),
            ))
        }
    }
}

/// cgroup v2: attaches the device program for `rules` to the cgroup
/// directory `dir`. The attachment lives as long as the cgroup.
pub fn apply_v2(dir: &Path, rules: &[DeviceRule]) -> std::io::Result<()> {
    let prog = load(rules)?;
    let cgroup = std::fs::File::open(dir)?;
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

/// A `--device` request, resolved on the host: the node to create in the
/// container and the rule that lets it be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path inside the container (`/dev/mynull`).
    pub path: String,
    pub kind: char,
    pub major: u32,
    pub minor: u32,
    /// Permission bits of the node (the host node's).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub access: String,
}

impl DeviceNode {
    pub fn rule(&self) -> DeviceRule {
        DeviceRule::new(self.kind, Some(self.major), Some(self.minor), &self.access)
    }
}

/// Parses `HOST[:CONTAINER][:PERMS]` (Docker's `--device`).
pub fn parse_device(spec: &str) -> Result<(String, String, String), String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let bad = || {
        format!(
            "invalid --device {spec:?}: use HOST[:CONTAINER][:PERMS], e.g. /dev/fuse:/dev/fuse:rwm"
        )
    };
    let (host, container, access) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, p] if valid_access(p) && !p.starts_with('/') => (*h, *h, *p),
        [h, c] => (*h, *c, "rwm"),
        [h, c, p] => (*h, *c, *p),
        _ => return Err(bad()),
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(bad());
    }
    if !valid_access(access) {
        return Err(format!(
            "invalid --device {spec:?}: permissions {access:?} must be a combination of r, w and m"
        ));
    }
    if container.split('/').any(|c| c == "..") {
        return Err(format!(
            "invalid --device {spec:?}: the container path must not contain \"..\""
        ));
    }
    Ok((host.to_string(), container.to_string(), access.to_string()))
}

/// Looks a `--device` host path up (a character or block device).
pub fn host_device(spec: &str) -> Result<DeviceNode, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (host, container, access) = parse_device(spec)?;
    let meta = std::fs::metadata(&host)
        .map_err(|e| format!("error gathering device information for {host:?}: {e}"))?;
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else if meta.file_type().is_block_device() {
        'b'
    } else {
        return Err(format!(
            "{host:?} is not a device node (--device takes a character or block device)"
        ));
    };
    let rdev = meta.rdev();
    Ok(DeviceNode {
        path: container,
        kind,
        major: libc::major(rdev),
        minor: libc::minor(rdev),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_are_dockers() {
        let lines: Vec<String> = default_rules().iter().map(|r| r.v1_line()).collect();
        assert_eq!(lines[0], "c *:* m");
        assert_eq!(lines[1], "b *:* m");
        assert!(lines.contains(&"c 1:3 rwm".to_string()));
        assert!(lines.contains(&"c 136:* rwm".to_string()));
        assert!(!lines.iter().any(|l| l.starts_with("c 10:")));
    }

    #[test]
    fn device_flags_parse() {
        assert_eq!(
            parse_device("/dev/null").unwrap(),
            ("/dev/null".into(), "/dev/null".into(), "rwm".into())
        );
        assert_eq!(
            parse_device("/dev/null:/dev/mynull").unwrap().1,
            "/dev/mynull"
        );
        assert_eq!(parse_device("/dev/null:r").unwrap().2, "r");
        assert_eq!(parse_device("/dev/null:/dev/x:rw").unwrap().2, "rw");
        assert!(parse_device("/dev/null:/dev/x:rwx").is_err());
        assert!(parse_device("null").is_err());
        assert!(parse_device("/dev/null:/dev/../etc/x").is_err());
        let n = host_device("/dev/null:/dev/mynull").unwrap();
        assert_eq!((n.kind, n.major, n.minor), ('c', 1, 3));
        assert!(host_device("/etc/hostname").is_err());
    }

    #[test]
    fn program_jumps_land_on_the_next_rule() {
        let p = program(&default_rules());
        for (i, ins) in p.iter().enumerate() {
            if ins.code == BPF_JMP_JNE_K {
                let target = i + 1 + ins.off as usize;
                assert!(target < p.len());
                // Each rule starts after a previous rule's exit.
                assert_eq!(p[target - 1].code, BPF_EXIT, "jump at {i}");
            }
        }
        assert_eq!(p.last().unwrap().code, BPF_EXIT);
    }

    /// The v2 path for real: a cgroup under this host's cgroup2 mount with
    /// the program attached, and a shell moved into it. Skipped where there
    /// is no cgroup2 hierarchy or no root.
    #[test]
    fn bpf_program_enforces_the_rules_in_a_cgroup2() {
        let Some(unified) = super::super::cgroups::Layout::detect()
            .ok()
            .and_then(|l| l.unified)
        else {
            eprintln!("no cgroup2 hierarchy here: skipped");
            return;
        };
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("not root: skipped");
            return;
        }
        let dir = unified.join(format!("flotilla-devtest-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _cleanup = Cleanup(dir.clone());
        apply_v2(&dir, &default_rules()).expect("attach the device program");
        let tmp = tempfile::tempdir().unwrap();
        let node = tmp.path().join("loop0");
        // The shell joins the cgroup, then each check prints ok/EPERM.
        let script = format!(
            "echo $$ > {procs} || exit 99
             try() {{ if eval \"$1\" 2>/dev/null; then echo ok; else echo denied; fi; }}
             try 'true < /dev/null'
             try 'true > /dev/zero'
             try 'true < /dev/loop-control'
             try 'mknod {node} b 7 0'
             try 'true < {node}'",
            procs = dir.join("cgroup.procs").display(),
            node = node.display()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            ["ok", "ok", "denied", "ok", "denied"],
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
