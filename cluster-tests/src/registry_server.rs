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
    /// Require Bearer tokens from a token server started with the registry,
    /// which issues them to this user and password (Basic auth on the token
    /// request).
    pub token_auth: Option<(String, String)>,
}

/// A running registry.
pub struct RegistryServer {
    child: Child,
    /// The token server, when Bearer auth is on (stops when dropped).
    _tokens: Option<TokenServer>,
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
        let mut tokens = None;
        if let Some((user, pass)) = &options.token_auth {
            let server = TokenServer::start(dir.path(), user, pass);
            config.push_str(&format!(
                "auth:\n  token: {{realm: \"http://{}/token\", service: flotilla-test, issuer: flotilla-test-issuer, rootcertbundle: {}}}\n",
                server.addr,
                server.cert.display()
            ));
            tokens = Some(server);
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
            _tokens: tokens,
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

/// A minimal real token server for the distribution spec's Bearer flow: it
/// answers `GET /token?service=…&scope=…` with a JWT signed RS256 by a key
/// whose self-signed certificate the registry trusts (`rootcertbundle`), the
/// certificate carried in the JWT's `x5c` header. It grants every requested
/// action to the one user whose Basic credentials it knows, and refuses others.
struct TokenServer {
    addr: String,
    cert: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TokenServer {
    fn start(dir: &Path, user: &str, pass: &str) -> TokenServer {
        let key = dir.join("token.key");
        let cert = dir.join("token.pem");
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=flotilla test token issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let expected = format!("Basic {}", b64(format!("{user}:{pass}").as_bytes()));
        let x5c = b64(&der.stdout);
        std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => serve_token(stream, &expected, &x5c, &key),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TokenServer { addr, cert, stop }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64url(data: &[u8]) -> String {
    b64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
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

fn serve_token(mut stream: std::net::TcpStream, expected_auth: &str, x5c: &str, key: &Path) {
    use std::io::{BufRead, BufReader, Write};
    let _ = stream.set_nonblocking(false);
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") && v.trim() == expected_auth {
                authorized = true;
            }
        }
    }
    let respond = |stream: &mut std::net::TcpStream, status: &str, body: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    if !authorized {
        respond(
            &mut stream,
            "401 Unauthorized",
            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
        );
        return;
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut access = Vec::new();
    for pair in query.split('&') {
        if let Some(scope) = pair.strip_prefix("scope=") {
            let scope = url_decode(scope);
            let parts: Vec<&str> = scope.split(':').collect();
            if parts.len() == 3 {
                access.push(serde_json::json!({
                    "type": parts[0], "name": parts[1],
                    "actions": parts[2].split(',').collect::<Vec<_>>()
                }));
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "flotilla-test-issuer", "sub": "alice", "aud": "flotilla-test",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(signing_input.as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl dgst");
    let token = format!("{signing_input}.{}", b64url(&sig.stdout));
    respond(
        &mut stream,
        "200 OK",
        &serde_json::json!({"token": token}).to_string(),
    );
}
