//! Seccomp: Docker's default profile, profiles in Docker's JSON format
//! (`--security-opt seccomp=FILE`), and their compilation to classic BPF and
//! installation in the container's process.
//!
//! A profile goes through three steps, the way Docker does it:
//! 1. **resolve** (in the daemon, at start): keep the rules whose
//!    `includes`/`excludes` (capabilities, architecture, minimum kernel) fit
//!    this container and host; the result is stored in `config.json` as the
//!    OCI spec's `linux.seccomp` (so `runc` can run the same bundle);
//! 2. **compile** (in the container's init or the exec helper): the rules of
//!    each action become one BPF program ([`seccompiler`] writes the
//!    per-syscall comparisons), one section per architecture (x86_64 and the
//!    32-bit i386 calls of an x86_64 kernel);
//! 3. **install**, as the last step before `execve`, once the credentials are
//!    final (needs `no_new_privs`, which Flotilla always sets).
//!
//! Several rule actions: the kernel runs every installed filter and takes the
//! most restrictive answer; between two `ERRNO` answers the filter installed
//! last wins. So the allow-list filter (mismatch = the default action) is
//! installed first and each other action gets a filter of its own (mismatch =
//! allow) installed after it: `clone3` without `CAP_SYS_ADMIN` then fails with
//! `ENOSYS` (from the later filter) rather than `EPERM`, as under Docker.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use super::seccomp_tables;

/// Errors of a profile: what is wrong and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("invalid seccomp profile: {0}")]
    Invalid(String),
    #[error("seccomp profiles are compiled for x86_64 only; run with --security-opt seccomp=unconfined on this architecture")]
    UnsupportedArch,
    #[error("failed to compile the seccomp profile: {0}")]
    Compile(String),
}

/// A profile in Docker's JSON format (the subset Flotilla understands: what
/// Docker's own default profile uses). Unknown fields are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// `SCMP_ACT_ERRNO`, `SCMP_ACT_ALLOW`, `SCMP_ACT_KILL`…
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_X86_64`, `SCMP_ARCH_X86`… (filled from `archMap` when resolved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Docker's map from the native architecture to the ones it also allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}

/// One entry of `archMap`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Option<Vec<String>>,
}

/// A rule: these syscalls get this action (when the arguments match).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    #[serde(default)]
    pub names: Vec<String>,
    /// The old single-name form (`"name": "read"`).
    #[serde(default, skip_serializing)]
    pub name: Option<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// All must match (AND); rules for the same syscall are alternatives (OR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<Arg>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub includes: Option<Filter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excludes: Option<Filter>,
}

/// A comparison on one syscall argument.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_EQ`, `SCMP_CMP_NE`, `SCMP_CMP_LT`, `SCMP_CMP_LE`,
    /// `SCMP_CMP_GT`, `SCMP_CMP_GE`, `SCMP_CMP_MASKED_EQ` (`value` is the
    /// mask, `valueTwo` the expected bits).
    pub op: String,
}

/// When a rule applies (`includes`) or not (`excludes`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// includes: every one is in the container's set; excludes: any one is.
    #[serde(default)]
    pub caps: Vec<String>,
    /// Docker's architecture names (`amd64`, `arm64`, `x86`…).
    #[serde(default)]
    pub arches: Vec<String>,
    /// `4.8`: only on kernels at least this new.
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// Docker's default: the allow-list below, everything else `EPERM`.
/// Names the kernel does not have on an architecture are skipped when
/// compiling, so the list covers every architecture Docker supports.
const DEFAULT_ALLOWED: &str = "
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown
chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod
fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr
flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32
getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage
getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl
io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup
io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
lchown32 lgetxattr link linkat listen listmount listxattr listxattrat llistxattr _llseek
lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier memfd_create
memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock
munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2
pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename
renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount
statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create
timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times
tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat
utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
";

/// Namespace-creating `clone` flags (`CLONE_NEWNS | NEWCGROUP | NEWUTS |
/// NEWIPC | NEWUSER | NEWPID | NEWNET`): `clone` is allowed only when none is set.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `AF_VSOCK`: the one socket family the default profile refuses.
const AF_VSOCK: u64 = 40;

fn rule(names: &[&str], action: &str) -> SyscallRule {
    SyscallRule {
        names: names.iter().map(|s| s.to_string()).collect(),
        action: action.to_string(),
        ..SyscallRule::default()
    }
}

fn allow(names: &[&str]) -> SyscallRule {
    rule(names, "SCMP_ACT_ALLOW")
}

fn with_cap(mut r: SyscallRule, cap: &str) -> SyscallRule {
    r.includes.get_or_insert_with(Filter::default).caps = vec![cap.to_string()];
    r
}

fn with_arches(mut r: SyscallRule, arches: &[&str]) -> SyscallRule {
    r.includes.get_or_insert_with(Filter::default).arches =
        arches.iter().map(|s| s.to_string()).collect();
    r
}

fn arg(index: u32, op: &str, value: u64, value_two: u64) -> Arg {
    Arg {
        index,
        value,
        value_two,
        op: op.to_string(),
    }
}

/// Docker's default profile (moby's `profiles/seccomp`), in our own form.
pub fn default_profile() -> Profile {
    let mut syscalls = vec![allow(
        &DEFAULT_ALLOWED.split_whitespace().collect::<Vec<_>>(),
    )];
    let mut ptrace = allow(&["process_vm_readv", "process_vm_writev", "ptrace"]);
    ptrace.includes = Some(Filter {
        min_kernel: Some("4.8".into()),
        ..Filter::default()
    });
    syscalls.push(ptrace);
    // socket(2): every family but AF_VSOCK.
    for (op, value) in [
        ("SCMP_CMP_LT", AF_VSOCK - 2),
        ("SCMP_CMP_EQ", AF_VSOCK - 1),
        ("SCMP_CMP_GT", AF_VSOCK),
    ] {
        let mut r = allow(&["socket"]);
        r.args = Some(vec![arg(0, op, value, 0)]);
        syscalls.push(r);
    }
    // personality(2): only the harmless personas (Linux, Linux32, with UNAME26, query).
    for value in [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        let mut r = allow(&["personality"]);
        r.args = Some(vec![arg(0, "SCMP_CMP_EQ", value, 0)]);
        syscalls.push(r);
    }
    for (names, arches) in [
        (&["sync_file_range2", "swapcontext"][..], &["ppc64le"][..]),
        (
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
            &["arm", "arm64"],
        ),
        (&["arch_prctl"], &["amd64", "x32"]),
        (&["modify_ldt"], &["amd64", "x32", "x86"]),
        (
            &[
                "s390_pci_mmio_read",
                "s390_pci_mmio_write",
                "s390_runtime_instr",
            ],
            &["s390", "s390x"],
        ),
        (&["riscv_flush_icache"], &["riscv64"]),
    ] {
        syscalls.push(with_arches(allow(names), arches));
    }
    syscalls.push(with_cap(
        allow(&["open_by_handle_at"]),
        "CAP_DAC_READ_SEARCH",
    ));
    syscalls.push(with_cap(
        allow(&[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ]),
        "CAP_SYS_ADMIN",
    ));
    // clone(2) without CAP_SYS_ADMIN: no namespace flags (s390 swaps the
    // first two arguments).
    for (index, include, exclude) in [
        (0, None, Some(vec!["s390".to_string(), "s390x".to_string()])),
        (1, Some(vec!["s390".to_string(), "s390x".to_string()]), None),
    ] {
        let mut r = allow(&["clone"]);
        r.args = Some(vec![arg(
            index,
            "SCMP_CMP_MASKED_EQ",
            CLONE_NAMESPACE_FLAGS,
            0,
        )]);
        r.includes = include.map(|arches| Filter {
            arches,
            ..Filter::default()
        });
        r.excludes = Some(Filter {
            caps: vec!["CAP_SYS_ADMIN".into()],
            arches: exclude.unwrap_or_default(),
            min_kernel: None,
        });
        syscalls.push(r);
    }
    // clone3 cannot be filtered by flags (they are in memory): without
    // CAP_SYS_ADMIN it reports ENOSYS so that libc falls back to clone.
    let mut clone3 = rule(&["clone3"], "SCMP_ACT_ERRNO");
    clone3.errno_ret = Some(libc::ENOSYS as u32);
    clone3.excludes = Some(Filter {
        caps: vec!["CAP_SYS_ADMIN".into()],
        ..Filter::default()
    });
    syscalls.push(clone3);
    for (names, cap) in [
        (&["reboot"][..], "CAP_SYS_BOOT"),
        (&["chroot"], "CAP_SYS_CHROOT"),
        (
            &["delete_module", "init_module", "finit_module"],
            "CAP_SYS_MODULE",
        ),
        (&["acct"], "CAP_SYS_PACCT"),
        (
            &[
                "kcmp",
                "pidfd_getfd",
                "process_madvise",
                "process_vm_readv",
                "process_vm_writev",
                "ptrace",
            ],
            "CAP_SYS_PTRACE",
        ),
        (&["iopl", "ioperm"], "CAP_SYS_RAWIO"),
        (
            &["settimeofday", "stime", "clock_settime", "clock_settime64"],
            "CAP_SYS_TIME",
        ),
        (&["vhangup"], "CAP_SYS_TTY_CONFIG"),
        (
            &[
                "get_mempolicy",
                "mbind",
                "set_mempolicy",
                "set_mempolicy_home_node",
            ],
            "CAP_SYS_NICE",
        ),
        (&["syslog"], "CAP_SYSLOG"),
        (&["bpf"], "CAP_BPF"),
        (&["perf_event_open"], "CAP_PERFMON"),
    ] {
        syscalls.push(with_cap(allow(names), cap));
    }
    let arch_map = [
        ("SCMP_ARCH_X86_64", &["SCMP_ARCH_X86", "SCMP_ARCH_X32"][..]),
        ("SCMP_ARCH_AARCH64", &["SCMP_ARCH_ARM"]),
    ]
    .into_iter()
    .map(|(a, subs)| ArchMap {
        architecture: a.to_string(),
        sub_architectures: Some(subs.iter().map(|s| s.to_string()).collect()),
    })
    .collect();
    Profile {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(libc::EPERM as u32),
        architectures: Vec::new(),
        arch_map,
        syscalls,
    }
}

/// This host's architecture in Docker's (Go's) naming, and in libseccomp's.
fn native_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
        "s390x" => ("s390x", "SCMP_ARCH_S390X"),
        "powerpc64" => ("ppc64le", "SCMP_ARCH_PPC64LE"),
        other => (other, "SCMP_ARCH_NATIVE"),
    }
}

/// The running kernel's `major.minor`.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    parse_version(&release).unwrap_or((0, 0))
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

const ACTIONS: [&str; 8] = [
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
];

const OPS: [&str; 7] = [
    "SCMP_CMP_EQ",
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_GT",
    "SCMP_CMP_GE",
    "SCMP_CMP_MASKED_EQ",
];

fn check_action(action: &str) -> Result<(), SeccompError> {
    if ACTIONS.contains(&action) {
        Ok(())
    } else if action == "SCMP_ACT_NOTIFY" {
        Err(SeccompError::Invalid(
            "SCMP_ACT_NOTIFY (user notification) is not supported".into(),
        ))
    } else {
        Err(SeccompError::Invalid(format!(
            "unknown action {action:?} (use one of {})",
            ACTIONS.join(", ")
        )))
    }
}

/// Parses a profile in Docker's JSON format and checks every action and
/// comparison, so that a bad file is refused at `create`, not at start.
pub fn parse_profile(json: &str) -> Result<Profile, SeccompError> {
    let profile: Profile =
        serde_json::from_str(json).map_err(|e| SeccompError::Invalid(e.to_string()))?;
    validate(&profile)?;
    Ok(profile)
}

fn validate(profile: &Profile) -> Result<(), SeccompError> {
    if profile.default_action.is_empty() {
        return Err(SeccompError::Invalid("defaultAction is missing".into()));
    }
    check_action(&profile.default_action)?;
    for (i, r) in profile.syscalls.iter().enumerate() {
        check_action(&r.action)
            .map_err(|e| SeccompError::Invalid(format!("syscalls[{i}]: {e}")))?;
        if r.names.is_empty() && r.name.as_deref().unwrap_or("").is_empty() {
            return Err(SeccompError::Invalid(format!(
                "syscalls[{i}] names no syscall"
            )));
        }
        for a in r.args.as_deref().unwrap_or_default() {
            if a.index > 5 {
                return Err(SeccompError::Invalid(format!(
                    "syscalls[{i}]: argument index {} (syscalls have 6 arguments, 0-5)",
                    a.index
                )));
            }
            if !OPS.contains(&a.op.as_str()) {
                return Err(SeccompError::Invalid(format!(
                    "syscalls[{i}]: unknown comparison {:?} (use one of {})",
                    a.op,
                    OPS.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Keeps the rules that apply to a container with capabilities `caps` on
/// this host (architecture, kernel), as Docker does before handing the
/// profile to the runtime. The result has no `includes`/`excludes` and
/// lists the architectures to compile for.
pub fn resolve(profile: &Profile, caps: &[String]) -> Result<Profile, SeccompError> {
    validate(profile)?;
    let (arch, scmp_arch) = native_arch();
    let kernel = kernel_version();
    let mut architectures: Vec<String> = profile.architectures.clone();
    for m in &profile.arch_map {
        if m.architecture == scmp_arch {
            architectures.push(m.architecture.clone());
            architectures.extend(m.sub_architectures.clone().unwrap_or_default());
        }
    }
    architectures.dedup();
    let has = |c: &String| caps.iter().any(|have| have == c);
    let mut syscalls = Vec::new();
    for r in &profile.syscalls {
        if let Some(inc) = &r.includes {
            if !inc.caps.iter().all(has) {
                continue;
            }
            if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
                continue;
            }
            if let Some(min) = inc.min_kernel.as_deref().filter(|m| !m.is_empty()) {
                let min = parse_version(min).ok_or_else(|| {
                    SeccompError::Invalid(format!("invalid minKernel {min:?} (use 4.8)"))
                })?;
                if kernel < min {
                    continue;
                }
            }
        }
        if let Some(exc) = &r.excludes {
            if exc.caps.iter().any(has) || exc.arches.iter().any(|a| a == arch) {
                continue;
            }
        }
        let mut names = r.names.clone();
        if let Some(n) = r.name.as_ref().filter(|n| !n.is_empty()) {
            names.push(n.clone());
        }
        syscalls.push(SyscallRule {
            names,
            name: None,
            action: r.action.clone(),
            errno_ret: r.errno_ret,
            args: r.args.clone().filter(|a| !a.is_empty()),
            includes: None,
            excludes: None,
        });
    }
    Ok(Profile {
        default_action: profile.default_action.clone(),
        default_errno_ret: profile.default_errno_ret,
        architectures,
        arch_map: Vec::new(),
        syscalls,
    })
}

/// The resolved profile as the OCI spec's `linux.seccomp` (same JSON shape).
pub fn to_oci(profile: &Profile) -> Result<oci_spec::runtime::LinuxSeccomp, SeccompError> {
    serde_json::to_value(profile)
        .and_then(serde_json::from_value)
        .map_err(|e| SeccompError::Invalid(e.to_string()))
}

/// The OCI spec's `linux.seccomp` back in our form.
pub fn from_oci(seccomp: &oci_spec::runtime::LinuxSeccomp) -> Result<Profile, SeccompError> {
    serde_json::to_value(seccomp)
        .and_then(serde_json::from_value)
        .map_err(|e| SeccompError::Invalid(e.to_string()))
}

fn action_of(action: &str, errno: Option<u32>) -> SeccompAction {
    match action {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno.unwrap_or(libc::EPERM as u32)),
        // SCMP_ACT_ERRNO; anything else was refused by `validate`.
        _ => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
    }
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// (audit arch value, syscall table, 64-bit arguments) of one architecture.
type Section = (u32, &'static [(&'static str, i64)], bool);

/// The sections to compile, per architecture.
fn sections(profile: &Profile) -> Result<Vec<Section>, SeccompError> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(SeccompError::UnsupportedArch);
    }
    let mut out = vec![(AUDIT_ARCH_X86_64, seccomp_tables::X86_64, true)];
    // x32 shares the x86_64 audit value (its calls carry bit 30 in the
    // number), so its calls match no rule and get the default action.
    if profile.architectures.iter().any(|a| a == "SCMP_ARCH_X86") {
        out.push((AUDIT_ARCH_I386, seccomp_tables::X86, false));
    }
    Ok(out)
}

fn syscall_number(table: &[(&str, i64)], name: &str) -> Option<i64> {
    table
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| table[i].1)
}

fn condition(a: &Arg, wide: bool) -> Result<SeccompCondition, SeccompError> {
    let (op, value) = match a.op.as_str() {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, a.value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, a.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, a.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, a.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, a.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, a.value),
        _ => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
    };
    // 32-bit calls carry 32-bit arguments: compare the low word only
    // when the value fits in it (libseccomp does the same).
    let len = if !wide && value <= u32::MAX as u64 && a.value <= u32::MAX as u64 {
        SeccompCmpArgLen::Dword
    } else {
        SeccompCmpArgLen::Qword
    };
    SeccompCondition::new(a.index as u8, len, op, value)
        .map_err(|e| SeccompError::Compile(e.to_string()))
}

/// A compiled profile: the programs to install, in order.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub programs: Vec<BpfProgram>,
}

/// Compiles a resolved profile.
pub fn compile(profile: &Profile) -> Result<Compiled, SeccompError> {
    validate(profile)?;
    let default = action_of(&profile.default_action, profile.default_errno_ret);
    let sections = sections(profile)?;
    // The distinct actions of the rules: Allow first (the main filter).
    let mut actions: Vec<SeccompAction> = Vec::new();
    for r in &profile.syscalls {
        let a = action_of(&r.action, r.errno_ret);
        if a != default && !actions.contains(&a) {
            actions.push(a);
        }
    }
    actions.sort_by_key(|a| *a != SeccompAction::Allow);
    let mut programs = Vec::new();
    if actions.first() != Some(&SeccompAction::Allow) && default != SeccompAction::Allow {
        // No allow rule at all: one filter that only applies the default.
        actions.insert(0, SeccompAction::Allow);
    }
    for action in actions {
        let (mismatch, matched) = if action == SeccompAction::Allow {
            (default.clone(), SeccompAction::Allow)
        } else {
            (SeccompAction::Allow, action.clone())
        };
        let mut parts = Vec::new();
        for (audit, table, wide) in &sections {
            // None: the syscall matches whatever its arguments.
            let mut by_nr: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
            for r in profile
                .syscalls
                .iter()
                .filter(|r| action_of(&r.action, r.errno_ret) == action)
            {
                let conditions = r
                    .args
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(|a| condition(a, *wide))
                    .collect::<Result<Vec<_>, _>>()?;
                for name in &r.names {
                    let Some(nr) = syscall_number(table, name) else {
                        continue;
                    };
                    let entry = by_nr.entry(nr).or_insert_with(|| Some(Vec::new()));
                    if conditions.is_empty() {
                        *entry = None;
                    } else if let Some(rules) = entry {
                        rules.push(
                            SeccompRule::new(conditions.clone())
                                .map_err(|e| SeccompError::Compile(e.to_string()))?,
                        );
                    }
                }
            }
            let rules: BTreeMap<i64, Vec<SeccompRule>> = by_nr
                .into_iter()
                .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
                .collect();
            let filter =
                SeccompFilter::new(rules, mismatch.clone(), matched.clone(), TargetArch::x86_64)
                    .map_err(|e| SeccompError::Compile(e.to_string()))?;
            let program: BpfProgram = filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
            parts.push((*audit, strip_arch_check(program)?));
        }
        programs.push(join_arches(parts)?);
    }
    Ok(Compiled { programs })
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JA: u16 = 0x05;
const BPF_RET_K: u16 = 0x06;
/// Offset of `arch` in `struct seccomp_data`.
const SECCOMP_DATA_ARCH: u32 = 4;
/// The kernel's limit on a classic BPF program.
const BPF_MAXINSNS: usize = 4096;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Removes seccompiler's leading "load arch; if not ours, kill" (3
/// instructions), to put several architectures in one program.
fn strip_arch_check(program: BpfProgram) -> Result<BpfProgram, SeccompError> {
    let header_ok = program.len() > 3
        && program[0].code == BPF_LD_W_ABS
        && program[0].k == SECCOMP_DATA_ARCH
        && program[1].code == BPF_JEQ_K
        && program[2].code == BPF_RET_K;
    if !header_ok {
        return Err(SeccompError::Compile(
            "unexpected program layout from seccompiler".into(),
        ));
    }
    Ok(program[3..].to_vec())
}

/// `load arch; for each: if arch == A run its section; else kill`. Every
/// section ends in returns, so none falls through into the next.
fn join_arches(parts: Vec<(u32, BpfProgram)>) -> Result<BpfProgram, SeccompError> {
    let mut out = vec![stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH)];
    for (audit, section) in parts {
        // Equal: skip the jump over the section.
        out.push(sock_filter {
            code: BPF_JEQ_K,
            jt: 1,
            jf: 0,
            k: audit,
        });
        out.push(stmt(BPF_JA, section.len() as u32));
        out.extend(section);
    }
    out.push(stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS));
    if out.len() > BPF_MAXINSNS {
        return Err(SeccompError::Compile(format!(
            "the profile needs {} BPF instructions, more than the kernel's {BPF_MAXINSNS}",
            out.len()
        )));
    }
    Ok(out)
}

/// Installs the programs on the calling thread, in order. Call it last
/// before `execve`: from here on the process is filtered. Needs
/// `no_new_privs` (or CAP_SYS_ADMIN).
pub fn install(compiled: &Compiled) -> std::io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const sock_filter,
    }
    for program in &compiled.programs {
        let prog = SockFprog {
            len: program.len() as libc::c_ushort,
            filter: program.as_ptr(),
        };
        // SAFETY: the kernel copies the program from `prog`, which points at
        // `program`'s live instructions for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0 as libc::c_ulong,
                &prog as *const SockFprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Times [`install`] of `compiled` in a forked child (the calling process
/// stays unfiltered): the kernel's cost of taking the programs (checking,
/// JIT, the per-syscall cache). For benchmarks.
pub fn time_install(compiled: &Compiled) -> std::io::Result<std::time::Duration> {
    use std::io::Read;
    let (r, w) = nix::unistd::pipe().map_err(std::io::Error::from)?;
    let mut r = std::fs::File::from(r);
    // SAFETY: the child only makes syscalls (prctl, seccomp, write, _exit)
    // on memory prepared before the fork; it never returns into Rust code
    // that could need a lock held by another thread.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            let _ = nix::sys::prctl::set_no_new_privs();
            let start = std::time::Instant::now();
            let ok = install(compiled).is_ok();
            let nanos = if ok {
                start.elapsed().as_nanos() as u64
            } else {
                u64::MAX
            };
            let _ = nix::unistd::write(&w, &nanos.to_le_bytes());
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut buf = [0u8; 8];
            let read = r.read_exact(&mut buf);
            let _ = nix::sys::wait::waitpid(child, None);
            read?;
            match u64::from_le_bytes(buf) {
                u64::MAX => Err(std::io::Error::other("installing the filter failed")),
                n => Ok(std::time::Duration::from_nanos(n)),
            }
        }
    }
}

/// `--security-opt seccomp=…` and `no-new-privileges`, as given to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChoice {
    Default,
    Unconfined,
    Custom(Profile),
}

/// Reads the `--security-opt` values that concern the runtime. `seccomp=`
/// carries the profile's JSON (the client reads the file, as Docker's does).
pub fn security_options(opts: &[String]) -> Result<SeccompChoice, String> {
    let mut choice = SeccompChoice::Default;
    for opt in opts {
        let (key, value) = opt
            .split_once(['=', ':'])
            .map_or((opt.as_str(), None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("seccomp", Some("unconfined")) => choice = SeccompChoice::Unconfined,
            ("seccomp", Some("builtin" | "default")) => choice = SeccompChoice::Default,
            ("seccomp", Some(json)) if json.trim_start().starts_with('{') => {
                choice = SeccompChoice::Custom(
                    parse_profile(json).map_err(|e| format!("--security-opt seccomp: {e}"))?,
                )
            }
            ("seccomp", _) => {
                return Err(
                    "--security-opt seccomp takes unconfined or a profile file (seccomp=FILE)"
                        .into(),
                )
            }
            ("no-new-privileges", None | Some("true")) => {}
            ("no-new-privileges", Some("false")) => {
                return Err("--security-opt no-new-privileges=false is not supported: Flotilla always sets no_new_privs".into())
            }
            ("label" | "apparmor", _) => {
                return Err(format!(
                    "--security-opt {key} is not supported (this runtime uses no LSM profile)"
                ))
            }
            _ => {
                return Err(format!(
                    "invalid --security-opt {opt:?}: use seccomp=unconfined, seccomp=FILE or no-new-privileges"
                ))
            }
        }
    }
    Ok(choice)
}

/// The resolved profile for a container: `None` when unconfined.
pub fn for_container(security_opt: &[String], caps: &[String]) -> Result<Option<Profile>, String> {
    let profile = match security_options(security_opt)? {
        SeccompChoice::Unconfined => return Ok(None),
        SeccompChoice::Default => default_profile(),
        SeccompChoice::Custom(p) => p,
    };
    resolve(&profile, caps).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_caps() -> Vec<String> {
        super::super::spec::DEFAULT_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn tables_are_sorted_for_binary_search() {
        for table in [seccomp_tables::X86_64, seccomp_tables::X86] {
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert_eq!(syscall_number(seccomp_tables::X86_64, "read"), Some(0));
        assert_eq!(syscall_number(seccomp_tables::X86_64, "clone3"), Some(435));
        assert_eq!(syscall_number(seccomp_tables::X86, "socketcall"), Some(102));
    }

    #[test]
    fn default_profile_resolves_by_capabilities() {
        let p = resolve(&default_profile(), &docker_caps()).unwrap();
        let has = |name: &str, action: &str| {
            p.syscalls
                .iter()
                .any(|r| r.action == action && r.names.iter().any(|n| n == name))
        };
        assert!(has("read", "SCMP_ACT_ALLOW"));
        assert!(
            has("chroot", "SCMP_ACT_ALLOW"),
            "CAP_SYS_CHROOT is a default"
        );
        assert!(!has("unshare", "SCMP_ACT_ALLOW"));
        assert!(!has("mount", "SCMP_ACT_ALLOW"));
        assert!(!has("keyctl", "SCMP_ACT_ALLOW"));
        assert!(has("clone3", "SCMP_ACT_ERRNO"));
        assert!(has("arch_prctl", "SCMP_ACT_ALLOW"));
        assert!(!has("s390_runtime_instr", "SCMP_ACT_ALLOW"));
        let clone = p
            .syscalls
            .iter()
            .find(|r| r.names == ["clone"])
            .expect("masked clone rule");
        assert_eq!(clone.args.as_ref().unwrap()[0].value, CLONE_NAMESPACE_FLAGS);
        assert_eq!(
            p.architectures,
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );

        let mut admin = docker_caps();
        admin.push("CAP_SYS_ADMIN".into());
        let p = resolve(&default_profile(), &admin).unwrap();
        assert!(p
            .syscalls
            .iter()
            .any(|r| r.action == "SCMP_ACT_ALLOW" && r.names.iter().any(|n| n == "unshare")));
        assert!(!p
            .syscalls
            .iter()
            .any(|r| r.names == ["clone3"] && r.action == "SCMP_ACT_ERRNO"));
    }

    #[test]
    fn oci_round_trip_keeps_the_rules() {
        let p = resolve(&default_profile(), &docker_caps()).unwrap();
        let oci = to_oci(&p).unwrap();
        assert_eq!(from_oci(&oci).unwrap(), p);
    }

    #[test]
    fn compiles_within_the_kernel_limit() {
        let p = resolve(&default_profile(), &docker_caps()).unwrap();
        let started = std::time::Instant::now();
        let c = compile(&p).unwrap();
        eprintln!(
            "compiled {} programs ({:?} instructions) in {:?}",
            c.programs.len(),
            c.programs.iter().map(|p| p.len()).collect::<Vec<_>>(),
            started.elapsed()
        );
        // The allow list, then the clone3 → ENOSYS filter.
        assert_eq!(c.programs.len(), 2);
        assert!(c.programs.iter().all(|p| p.len() <= BPF_MAXINSNS));
    }

    #[test]
    fn docker_format_files_parse_and_bad_ones_are_refused() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
            {"name":"chmod","action":"SCMP_ACT_ERRNO","args":[]}]}"#;
        let p = parse_profile(json).unwrap();
        let r = resolve(&p, &[]).unwrap();
        assert_eq!(r.syscalls[1].names, ["chmod"]);
        let c = compile(&r).unwrap();
        assert_eq!(c.programs.len(), 2, "EACCES and EPERM filters");
        for bad in [
            r#"{"syscalls":[]}"#,
            r#"{"defaultAction":"SCMP_ACT_NOPE"}"#,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"op":"SCMP_CMP_SORTA"}]}]}"#,
            "not json",
        ] {
            assert!(parse_profile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn security_options_parse() {
        assert_eq!(security_options(&[]).unwrap(), SeccompChoice::Default);
        assert_eq!(
            security_options(&["seccomp=unconfined".into()]).unwrap(),
            SeccompChoice::Unconfined
        );
        assert_eq!(
            security_options(&["no-new-privileges".into()]).unwrap(),
            SeccompChoice::Default
        );
        assert!(security_options(&["no-new-privileges=false".into()]).is_err());
        assert!(security_options(&["seccomp=/some/file.json".into()]).is_err());
        assert!(security_options(&["bogus".into()]).is_err());
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(parse_version("4.8"), Some((4, 8)));
        assert_eq!(parse_version("5"), Some((5, 0)));
        assert!(kernel_version() >= (3, 17));
    }
}
