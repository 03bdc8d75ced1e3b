//! A real image registry per test: Debian's `docker-registry` (the CNCF
//! distribution server, 2.8) on 127.0.0.1 with a free port and its storage in
//! a temp dir, optionally with HTTPS ([`RegistryBuilder::tls`], a throwaway CA
//! made with `openssl`), Basic auth ([`RegistryBuilder::htpasswd`], bcrypt
//! `htpasswd -B`) or Bearer tokens ([`RegistryBuilder::token_auth`], from a
//! small real token server in this module that signs RS256 JWTs with
//! `openssl dgst`). [`Registry::start`] waits for `/v2/` with a deadline;
//! `Drop` kills the server by PID and stops the token server, also when the
//! test panics, and prints the registry's log then.
//!
//! Also here: [`run_cmd`], a subprocess runner with a timeout for the other
//! tools the registry tests drive (`skopeo`, `umoci`, `curl`, the `flotilla`
//! CLI with a per-test `FLOTILLA_CONFIG`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::poll::poll_for;

/// How long the registry may take to answer `/v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a helper command ([`run_cmd`]) may run.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// The token server's `service` and `issuer` (the registry checks both).
const SERVICE: &str = "flotilla-registry";
const ISSUER: &str = "flotilla-token-issuer";

/// Runs `cmd` feeding `input` on stdin, killing it after `timeout`; returns its output.
pub fn run_cmd_timeout(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{cmd:?} still running after {timeout:?}; killed\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.join().unwrap_or_default()),
                    String::from_utf8_lossy(&err.join().unwrap_or_default())
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("wait for {cmd:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `cmd` (60 s limit), asserts it succeeded, and returns its stdout.
pub fn run_cmd(cmd: &mut Command) -> String {
    let out = run_cmd_timeout(cmd, None, CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`run_cmd`], returning stdout as bytes.
fn run_bytes(cmd: &mut Command, input: Option<&[u8]>) -> Vec<u8> {
    let out = run_cmd_timeout(cmd, input, CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `sha256:<hex>` of `data` (with `openssl dgst`).
pub fn sha256_digest(data: &[u8]) -> String {
    let out = run_bytes(
        Command::new("openssl").args(["dgst", "-sha256", "-hex", "-r"]),
        Some(data),
    );
    let text = String::from_utf8_lossy(&out);
    format!(
        "sha256:{}",
        text.split_whitespace().next().unwrap_or_default()
    )
}

/// A port nobody listens on right now (bind port 0, read it, close).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("pick a free port")
}

/// Who the token server knows: user, password, and the actions it grants.
#[derive(Clone, Debug)]
struct TokenUser {
    name: String,
    password: String,
    actions: Vec<String>,
}

/// Builds a [`Registry`].
#[derive(Debug, Default)]
pub struct RegistryBuilder {
    tls: bool,
    htpasswd: Vec<(String, String)>,
    token_users: Option<Vec<TokenUser>>,
}

impl RegistryBuilder {
    /// Serve HTTPS with a certificate for 127.0.0.1 signed by a fresh CA
    /// ([`Registry::ca_file`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Require Basic auth; `user` / `pass` may log in (call again for more users).
    pub fn htpasswd(mut self, user: &str, pass: &str) -> Self {
        self.htpasswd.push((user.into(), pass.into()));
        self
    }

    /// Require Bearer tokens from a token server started with the registry. It
    /// grants pull and push to `user` / `pass`, issues anonymous tokens that
    /// grant nothing, and refuses wrong passwords with 401.
    pub fn token_auth(self, user: &str, pass: &str) -> Self {
        self.token_user(user, pass, &["pull", "push"])
    }

    /// Adds a token-server user who is granted only `actions` (of those asked for).
    pub fn token_user(mut self, user: &str, pass: &str, actions: &[&str]) -> Self {
        self.token_users
            .get_or_insert_with(Vec::new)
            .push(TokenUser {
                name: user.into(),
                password: pass.into(),
                actions: actions.iter().map(|a| a.to_string()).collect(),
            });
        self
    }

    /// Starts the registry (and token server) and waits until `/v2/` answers.
    pub fn start(self) -> Registry {
        assert!(
            self.htpasswd.is_empty() || self.token_users.is_none(),
            "one auth scheme at a time"
        );
        assert!(
            Path::new("/usr/bin/docker-registry").is_file(),
            "/usr/bin/docker-registry missing: install Debian's docker-registry (scripts/install-deps.sh)"
        );
        let dir = tempfile::Builder::new()
            .prefix("flt-reg-")
            .tempdir_in("/tmp")
            .expect("create the registry's temp dir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\n\
             log: {{level: warn, formatter: text, accesslog: {{disabled: true}}}}\n\
             storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
             http:\n  addr: {host}\n  secret: flotilla-test-secret\n",
            storage.display()
        );
        let mut ca_file = None;
        if self.tls {
            let (ca, cert, key) = make_tls_certs(dir.path());
            config.push_str(&format!(
                "  tls: {{certificate: {}, key: {}}}\n",
                cert.display(),
                key.display()
            ));
            ca_file = Some(ca);
        }
        if !self.htpasswd.is_empty() {
            let file = dir.path().join("htpasswd");
            let mut text = String::new();
            for (user, pass) in &self.htpasswd {
                text.push_str(&run_cmd(
                    Command::new(htpasswd_bin()).args(["-Bbn", user, pass]),
                ));
            }
            std::fs::write(&file, text).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd: {{realm: flotilla-test, path: {}}}\n",
                file.display()
            ));
        }
        let mut tokens = None;
        if let Some(users) = self.token_users {
            let server = TokenServer::start(dir.path(), users);
            config.push_str(&format!(
                "auth:\n  token: {{realm: \"http://{}/token\", service: {SERVICE}, issuer: {ISSUER}, rootcertbundle: {}}}\n",
                server.addr,
                server.cert.display()
            ));
            tokens = Some(server);
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, &config).expect("write registry config");
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).expect("create registry log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        // Owned from here on: a failed start below still kills it in Drop.
        let mut registry = Registry {
            child: Some(child),
            tokens,
            host,
            ca_file,
            storage,
            dir,
        };
        registry.wait_ready();
        registry
    }
}

/// `htpasswd` from apache2-utils, installed on the spot if missing.
fn htpasswd_bin() -> &'static str {
    if !Path::new("/usr/bin/htpasswd").is_file() {
        eprintln!("htpasswd missing: installing apache2-utils");
        let _ = run_cmd_timeout(
            Command::new("apt-get").args(["install", "-y", "-q", "apache2-utils"]),
            None,
            Duration::from_secs(300),
        );
    }
    assert!(
        Path::new("/usr/bin/htpasswd").is_file(),
        "htpasswd missing and apache2-utils could not be installed (scripts/install-deps.sh)"
    );
    "/usr/bin/htpasswd"
}

/// A CA and a server certificate for IP 127.0.0.1 in `dir`; returns (ca, cert, key).
fn make_tls_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.pem"));
    let (key, csr, cert) = (
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.pem"),
    );
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write cert extensions");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run_cmd(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2", "-subj", "/CN=flotilla registry test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    );
    run_cmd(
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    run_cmd(
        Command::new("openssl")
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
            .arg(&cert),
    );
    (ca, cert, key)
}

/// A running registry owned by one test.
pub struct Registry {
    /// The `docker-registry` process; `None` once killed.
    child: Option<Child>,
    /// The token server, when Bearer auth is on.
    tokens: Option<TokenServer>,
    /// `127.0.0.1:PORT`.
    host: String,
    ca_file: Option<PathBuf>,
    storage: PathBuf,
    /// Config, certificates, storage, log; removed last.
    dir: tempfile::TempDir,
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub fn start() -> Registry {
        Self::builder().start()
    }

    /// A builder for TLS or auth variants.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// `127.0.0.1:PORT`, the registry part of image references and `login`'s argument.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `HOST/repo_tag`, e.g. `r.image("team/app:v1")`.
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host)
    }

    /// The CA file that makes the TLS variant's certificate trusted.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The `rootdirectory` of the registry's filesystem storage.
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// Where the registry keeps blob `digest` (`sha256:<hex>`) on disk.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Requests the token server has answered: `(user or "", query string, status)`.
    pub fn token_requests(&self) -> Vec<(String, String, u16)> {
        self.tokens
            .as_ref()
            .map(|t| t.seen.lock().expect("token log").clone())
            .unwrap_or_default()
    }

    /// `curl` against the registry (with the CA for TLS; `user:pass` for Basic auth).
    fn curl(&self, path: &str, extra: &[&str]) -> Output {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--noproxy", "*"]);
        if let Some(ca) = &self.ca_file {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.args(extra)
            .arg(format!("{scheme}://{}{path}", self.host));
        run_cmd_timeout(&mut cmd, None, Duration::from_secs(20))
    }

    fn wait_ready(&mut self) {
        let what = format!("the registry on {} to answer /v2/", self.host);
        poll_for(START_TIMEOUT, &what, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "docker-registry exited during start ({status}); its log:\n{}",
                    self.log()
                );
            }
            let out = self.curl("/v2/", &["-o", "/dev/null", "-w", "%{http_code}"]);
            let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if code == "200" || code == "401" {
                Ok(())
            } else {
                Err(format!(
                    "HTTP {code:?} {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        });
    }

    /// `GET /v2/<repo>/manifests/<reference>` as the registry serves it, with
    /// `auth` (`user:pass`) for a Basic-auth registry: (Content-Type, body).
    pub fn manifest(&self, repo: &str, reference: &str, auth: Option<&str>) -> (String, Vec<u8>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let headers = dir.path().join("headers");
        let headers_arg = headers.to_string_lossy().into_owned();
        let mut extra = vec![
            "-f",
            "-D",
            &headers_arg,
            "-H",
            "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json",
        ];
        if let Some(auth) = auth {
            extra.extend(["-u", auth]);
        }
        let out = self.curl(&format!("/v2/{repo}/manifests/{reference}"), &extra);
        assert!(
            out.status.success(),
            "GET manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let headers = std::fs::read_to_string(&headers).unwrap_or_default();
        let media_type = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        (media_type, out.stdout)
    }

    /// Uploads `data` as a blob of `repo` with `curl` (`POST …/blobs/uploads/`,
    /// then `PUT <Location>&digest=`), independently of Flotilla's push;
    /// returns its digest.
    pub fn upload_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256_digest(data);
        let dir = tempfile::tempdir().expect("temp dir");
        let headers = dir.path().join("headers");
        let headers_arg = headers.to_string_lossy().into_owned();
        let out = self.curl(
            &format!("/v2/{repo}/blobs/uploads/"),
            &["-f", "-X", "POST", "-D", &headers_arg, "-o", "/dev/null"],
        );
        assert!(
            out.status.success(),
            "start an upload to {repo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let headers = std::fs::read_to_string(&headers).unwrap_or_default();
        let location = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("upload answer without Location: {headers}"));
        // Location is absolute (http://HOST/v2/…) or a path.
        let path = match location.find("/v2/") {
            Some(i) => location[i..].to_string(),
            None => panic!("odd upload Location {location}"),
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let file = dir.path().join("blob");
        std::fs::write(&file, data).expect("write blob");
        let body = format!("@{}", file.display());
        let out = self.curl(
            &format!("{path}{sep}digest={digest}"),
            &[
                "-f",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &body,
            ],
        );
        assert!(
            out.status.success(),
            "upload blob {digest} to {repo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        digest
    }

    /// `PUT /v2/<repo>/manifests/<tag>` with `curl`.
    pub fn put_manifest(&self, repo: &str, tag: &str, media_type: &str, body: &[u8]) {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("manifest");
        std::fs::write(&file, body).expect("write manifest");
        let body = format!("@{}", file.display());
        let content_type = format!("Content-Type: {media_type}");
        let out = self.curl(
            &format!("/v2/{repo}/manifests/{tag}"),
            &[
                "-X",
                "PUT",
                "-H",
                &content_type,
                "--data-binary",
                &body,
                "-w",
                "\n%{http_code}",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim_end().ends_with("201"),
            "put manifest {repo}:{tag}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Tags of `repo` (`GET /v2/<repo>/tags/list`); empty when the repository is unknown.
    pub fn tags(&self, repo: &str, auth: Option<&str>) -> Vec<String> {
        let mut extra = vec![];
        if let Some(auth) = auth {
            extra.extend(["-u", auth]);
        }
        let out = self.curl(&format!("/v2/{repo}/tags/list"), &extra);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // By PID: our own child, killed and reaped.
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = child.wait();
        }
        // Stops and joins the token server's thread.
        self.tokens.take();
        if std::thread::panicking() {
            eprintln!(
                "===== docker-registry log ({}) =====\n{}\n===== end of registry log =====",
                self.host,
                self.log()
            );
        }
    }
}

/// A minimal real token server for the distribution spec's Bearer flow
/// (`docs/spec/auth/token.md`): `GET /token?service=…&scope=…` with Basic
/// credentials → `{"token": JWT}`. The JWT is RS256-signed (`openssl dgst
/// -sha256 -sign`) by a key whose self-signed certificate is the registry's
/// `rootcertbundle`, and names the key by the `kid` distribution 2.8 looks it
/// up by: libtrust's key ID, i.e. the SHA-256 of the DER SubjectPublicKeyInfo
/// truncated to 240 bits, base32 in twelve `:`-separated groups of four
/// (`registry/auth/token/accesscontroller.go` fills `trustedKeys` with
/// `libtrust.FromCryptoPublicKey(cert.PublicKey).KeyID()`).
struct TokenServer {
    addr: String,
    cert: PathBuf,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, String, u16)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path, users: Vec<TokenUser>) -> TokenServer {
        let key = dir.join("token.key");
        let cert = dir.join("token.pem");
        run_cmd(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=flotilla test token issuer", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        let spki = run_bytes(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-outform", "DER", "-in"])
                .arg(&key),
            None,
        );
        let hash = run_bytes(
            Command::new("openssl").args(["dgst", "-sha256", "-binary"]),
            Some(&spki),
        );
        let kid = libtrust_key_id(&hash[..30]);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let addr = listener
            .local_addr()
            .expect("token server address")
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let answer = serve_token(stream, &users, &kid, &key);
                    seen2.lock().expect("token log").push(answer);
                }
            }
        });
        TokenServer {
            addr,
            cert,
            stop,
            seen,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// libtrust's `keyIDEncode`: base32 (std alphabet, unpadded) in groups of 4 joined by `:`.
fn libtrust_key_id(bytes: &[u8]) -> String {
    let s = base32(bytes);
    let groups: Vec<&str> = s
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    groups.join(":")
}

fn base32(data: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut buf, mut bits) = (String::new(), 0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(A[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base64(data: &[u8], url: bool) -> String {
    let table: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(table[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
        if !url {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one token request; returns (user, query, status) for the log.
fn serve_token(
    stream: TcpStream,
    users: &[TokenUser],
    kid: &str,
    key: &Path,
) -> (String, String, u16) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone token stream"));
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let mut basic = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                basic = v.trim().strip_prefix("Basic ").map(str::to_string);
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut stream = stream;
    let mut respond = |status: u16, body: &str| {
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.flush();
    };
    if path != "/token" {
        respond(404, "{}");
        return (String::new(), query.to_string(), 404);
    }
    // Credentials: none is anonymous (a token granting nothing), wrong ones are refused.
    let user = match basic {
        None => None,
        Some(b) => match users
            .iter()
            .find(|u| base64(format!("{}:{}", u.name, u.password).as_bytes(), false) == b)
        {
            Some(u) => Some(u),
            None => {
                respond(
                    401,
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                );
                return ("?".into(), query.to_string(), 401);
            }
        },
    };
    let mut access = Vec::new();
    let mut service = String::new();
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("service=") {
            service = percent_decode(v);
        }
        if let Some(scope) = pair.strip_prefix("scope=") {
            let scope = percent_decode(scope);
            // repository:NAME:ACTIONS (NAME has no colon here: no port in repository names).
            let mut parts = scope.rsplitn(2, ':');
            let actions = parts.next().unwrap_or("");
            let Some((kind, name)) = parts.next().and_then(|r| r.split_once(':')) else {
                continue;
            };
            let granted: Vec<&str> = actions
                .split(',')
                .filter(|a| user.is_some_and(|u| u.actions.iter().any(|g| g == a)))
                .collect();
            access.push(serde_json::json!({"type": kind, "name": name, "actions": granted}));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": kid});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user.map(|u| u.name.as_str()).unwrap_or(""),
        "aud": if service.is_empty() { SERVICE.to_string() } else { service },
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        base64(header.to_string().as_bytes(), true),
        base64(claims.to_string().as_bytes(), true)
    );
    let sig = run_bytes(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(key),
        Some(signing_input.as_bytes()),
    );
    let token = format!("{signing_input}.{}", base64(&sig, true));
    respond(
        200,
        &serde_json::json!({"token": token, "expires_in": 300}).to_string(),
    );
    (
        user.map(|u| u.name.clone()).unwrap_or_default(),
        percent_decode(query),
        200,
    )
}
