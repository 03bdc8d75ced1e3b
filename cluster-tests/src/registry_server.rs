//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution server) on 127.0.0.1 with a free port, its storage in a temp
//! dir, optionally with HTTPS (a throwaway CA made with `openssl`) and Basic
//! auth (`htpasswd -B`). Killed by PID in `Drop`, also when a test fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::poll_until;

/// Options for [`RegistryServer::start`].
#[derive(Default, Clone)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate signed by a fresh test CA.
    pub tls: bool,
    /// Require Basic auth with this user and password.
    pub htpasswd: Option<(String, String)>,
}

/// A running registry.
pub struct RegistryServer {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The CA file clients need when `tls` is on.
    pub ca_file: Option<PathBuf>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("pick a free port")
}

/// Makes a CA and a server certificate for 127.0.0.1 in `dir`; returns (ca, cert, key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=flotilla test CA", "-days", "2", "-keyout"])
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (ca, cert, key)
}

impl RegistryServer {
    /// Starts a registry and waits until `/v2/` answers.
    pub fn start(options: RegistryOptions) -> RegistryServer {
        let dir = tempfile::Builder::new()
            .prefix("flt-registry-")
            .tempdir_in("/tmp")
            .expect("create the registry's temp dir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        let mut ca_file = None;
        if options.tls {
            let (ca, cert, key) = make_certs(dir.path());
            config.push_str(&format!(
                "  tls: {{certificate: {}, key: {}}}\n",
                cert.display(),
                key.display()
            ));
            ca_file = Some(ca);
        }
        if let Some((user, pass)) = &options.htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd: {{realm: flotilla-test, path: {}}}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry (Debian package docker-registry)");
        let server = RegistryServer {
            child,
            dir,
            host,
            ca_file,
        };
        let addr = server.host.clone();
        poll_until(Duration::from_secs(20), "the registry to listen", || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        server
    }

    /// The directory holding the registry's storage.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- registry log ---\n{}", self.log());
        }
    }
}
