//! A hostile registry for the security tests: a tiny HTTP/1.1 server on a
//! loopback address of the test's choosing (`127.0.0.1`, or `127.0.0.2` to be
//! "another host") that answers each path with a canned reply and records
//! every request it receives, headers included, with how many body bytes it
//! managed to send before the client hung up. Replies can lie: a
//! `Content-Length` larger than the body ([`Body::Short`]), or a body that
//! never ends ([`Body::Endless`]). A route can demand an `Authorization`
//! header and answer 401 with a challenge otherwise.
//!
//! One thread accepts, one thread per connection answers one request and
//! closes (`Connection: close`). `Drop` stops the accept loop and joins it.
//! Unlike [`crate::registry::Registry`] this is not a real registry: it only
//! serves what the test put in.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How much an [`Body::Endless`] reply sends at most (the test's own bound).
const ENDLESS_CAP: u64 = 256 << 20;

/// A reply body.
#[derive(Clone, Debug)]
pub enum Body {
    /// These bytes, with a true `Content-Length`.
    Bytes(Vec<u8>),
    /// Announces `declared` bytes in `Content-Length`, sends `data`, then
    /// closes: a body cut short.
    Short {
        /// The `Content-Length` sent.
        declared: u64,
        /// What is actually sent.
        data: Vec<u8>,
    },
    /// Zero bytes without `Content-Length` until the client hangs up (or
    /// 256 MiB have gone).
    Endless,
}

/// One canned reply.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
}

impl Reply {
    /// 200 with `body` and a `Content-Type`.
    pub fn ok(content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Bytes(body),
        }
    }

    /// 200 with a lying or endless `body`.
    pub fn body(content_type: &str, body: Body) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names (lowercased) and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes written before the reply ended or the client hung up.
    pub sent: u64,
}

impl Request {
    /// The value of header `name` (lowercase), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A route: a path (exact, or a prefix when it ends with `*`), an optional
/// required `Authorization` value with the challenge to send without it.
#[derive(Clone, Debug)]
struct Route {
    path: String,
    auth: Option<(String, String)>,
    reply: Reply,
}

type Routes = Arc<Mutex<Vec<Route>>>;

/// A running fake registry.
pub struct FakeRegistry {
    addr: String,
    routes: Routes,
    seen: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeRegistry {
    /// Starts a server on `ip` (a loopback address) and a free port.
    pub fn start(ip: &str) -> FakeRegistry {
        let listener = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("bind the fake registry on {ip}: {e}"));
        let addr = listener.local_addr().expect("local addr").to_string();
        let routes: Routes = Arc::default();
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (routes2, seen2, stop2) = (routes.clone(), seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (routes, seen, stop) = (routes2.clone(), seen2.clone(), stop2.clone());
                std::thread::spawn(move || serve(stream, &routes, &seen, &stop));
            }
        });
        FakeRegistry {
            addr,
            routes,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// `IP:PORT`, the registry part of image references.
    pub fn host(&self) -> &str {
        &self.addr
    }

    /// Answers `path` (exact; a prefix when it ends with `*`) with `reply`.
    /// Later routes win over earlier ones.
    pub fn route(&self, path: &str, reply: Reply) {
        self.add(path, None, reply);
    }

    /// Like [`FakeRegistry::route`], but only for requests whose
    /// `Authorization` is `expected`; others get 401 with
    /// `WWW-Authenticate: challenge`.
    pub fn route_with_auth(&self, path: &str, expected: &str, challenge: &str, reply: Reply) {
        self.add(path, Some((expected.into(), challenge.into())), reply);
    }

    fn add(&self, path: &str, auth: Option<(String, String)>, reply: Reply) {
        self.routes.lock().expect("routes").push(Route {
            path: path.into(),
            auth,
            reply,
        });
    }

    /// Every request answered so far, in order of completion.
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("requests").clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Status",
    }
}

/// Answers one request on `stream`, then records it.
fn serve(stream: TcpStream, routes: &Routes, seen: &Mutex<Vec<Request>>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let route = routes
        .lock()
        .expect("routes")
        .iter()
        .rev()
        .find(|r| match r.path.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => r.path == path,
        })
        .cloned();
    let authorization = headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone());
    let reply = match route {
        None => Reply {
            status: 404,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(br#"{"errors":[{"code":"NOT_FOUND"}]}"#.to_vec()),
        },
        Some(Route {
            auth: Some((expected, challenge)),
            ..
        }) if authorization.as_deref() != Some(expected.as_str()) => Reply {
            status: 401,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("WWW-Authenticate".into(), challenge),
            ],
            body: Body::Bytes(br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec()),
        },
        Some(r) => r.reply,
    };
    let mut stream = stream;
    let sent = write_reply(&mut stream, &method, &reply, stop);
    seen.lock().expect("requests").push(Request {
        method,
        target,
        headers,
        sent,
    });
}

/// Writes the reply; returns the body bytes written.
fn write_reply(stream: &mut TcpStream, method: &str, reply: &Reply, stop: &AtomicBool) -> u64 {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match &reply.body {
        Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::Short { declared, .. } => head.push_str(&format!("Content-Length: {declared}\r\n")),
        Body::Endless => {}
    }
    head.push_str("Connection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).is_err() || method == "HEAD" {
        return 0;
    }
    let mut sent = 0u64;
    match &reply.body {
        Body::Bytes(b) | Body::Short { data: b, .. } => {
            for chunk in b.chunks(64 << 10) {
                if stream.write_all(chunk).is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
        }
        Body::Endless => {
            let zeros = vec![0u8; 64 << 10];
            while sent < ENDLESS_CAP && !stop.load(Ordering::SeqCst) {
                if stream.write_all(&zeros).is_err() {
                    break;
                }
                sent += zeros.len() as u64;
            }
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
    sent
}
