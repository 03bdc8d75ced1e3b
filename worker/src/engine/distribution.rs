//! `pull`, `push` and `login` over the OCI distribution API: a small registry
//! client (Basic and Bearer-token auth, HTTPS with an extra CA file, plain HTTP
//! only for registries named insecure) and the glue that moves blobs between
//! a registry and the image store, verifying every digest, streaming every
//! layer to disk (never whole in memory), reporting progress per layer.
//!
//! A registry is not trusted: every descriptor digest is a validated
//! [`Digest`] from the moment the JSON is parsed, temp files are named by
//! position (`config`, `layer-0`, …) and removed on every error path
//! ([`PartialFile`]), content is verified against its digest before it moves
//! into the store, and every body is bounded (documents 4 MiB, token replies
//! 1 MiB, blobs by their descriptor's size and the store's layer limit) while
//! the free-space reserve of the data root is watched. Credentials go only to
//! the registry itself and to token realms on its own host over https (plain
//! http only when the registry is loopback or named insecure); a realm
//! elsewhere gets an anonymous request, and the user is told.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use agent_common::proto::{
    Progress, PullRequest, PushRequest, RegistryAuth, RegistryLoginRequest, RegistryOptions,
};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::{Engine, EngineError, Result};
use crate::image::digest::Digest;
use crate::image::limits::{Meter, SpaceCheck, MAX_DOCUMENT, MAX_TOKEN_REPLY};
use crate::image::reference::Reference;
use crate::image::store::PartialFile;
use crate::image::ImageError;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// How much of an error reply is read (for its message).
const MAX_ERROR_BODY: u64 = 64 << 10;

fn reg_err(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(msg.into())
}

fn net_err(registry: &str, e: reqwest::Error) -> EngineError {
    // reqwest's Display stops at "error sending request for url (…)": the
    // cause (refused connection, untrusted certificate, …) is in the chain.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = cause.source();
    }
    let hint = if msg.to_ascii_lowercase().contains("certificate") {
        format!("if {registry} uses a private CA, pass --registry-ca FILE")
    } else {
        format!("is it running? For a plain-HTTP registry pass --insecure-registry {registry}")
    };
    EngineError::Internal(format!(
        "failed to reach registry {registry}: {msg}; {hint}"
    ))
}

/// A content descriptor. `digest` is validated while the JSON is parsed, so
/// a manifest or index carrying a path-shaped digest never parses.
#[derive(Deserialize)]
struct Descriptor {
    digest: Digest,
    /// 0 when absent; then only the store's layer limit bounds the blob.
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: String,
    config: Option<Descriptor>,
    layers: Vec<Descriptor>,
    manifests: Vec<Descriptor>,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Reads a whole reply body of at most `limit` bytes (refusing a larger
/// Content-Length before reading, and stopping a longer stream as soon as it
/// passes the limit), never more into memory.
async fn read_capped(
    host: &str,
    resp: reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let too_large = || {
        EngineError::Image(ImageError::TooLarge {
            what: format!("{what} from registry {host}"),
            limit,
            hint: "",
        })
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| net_err(host, e))?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The first 64 KiB of an error reply, as text.
async fn error_text(resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = (MAX_ERROR_BODY as usize).saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() as u64 >= MAX_ERROR_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a blob download goes and what bounds it.
struct BlobTarget<'a> {
    /// The temp file to create (named by position).
    dest: std::path::PathBuf,
    /// The most bytes accepted when the descriptor gives no size (and the
    /// most a descriptor may declare).
    cap: u64,
    /// Says which limit `cap` is.
    hint: &'static str,
    /// The data root's free-space reserve, watched while writing.
    space: &'a SpaceCheck,
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// A client for one registry host.
struct Registry {
    host: String,
    base: String,
    http: reqwest::Client,
    auth: Option<RegistryAuth>,
    /// Bearer tokens per scope.
    tokens: tokio::sync::Mutex<HashMap<String, String>>,
    /// Spoken to over plain http (named in --insecure-registry).
    insecure: bool,
    /// Why credentials were not sent to a token realm, once that happened.
    withheld: std::sync::Mutex<Option<String>>,
    /// Where to tell the user (a pull's or push's progress stream).
    notify: Option<mpsc::Sender<Progress>>,
}

impl Registry {
    fn new(host: &str, options: &RegistryOptions, auth: Option<RegistryAuth>) -> Result<Registry> {
        let insecure = options.insecure_registries.iter().any(|h| h == host);
        let mut roots = rustls::RootCertStore::empty();
        let mut add_pem = |path: &Path| -> Result<usize> {
            use rustls::pki_types::pem::PemObject;
            let mut n = 0;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| reg_err(format!("failed to read CA file {}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert
                    .map_err(|e| reg_err(format!("bad certificate in {}: {e}", path.display())))?;
                if roots.add(cert).is_ok() {
                    n += 1;
                }
            }
            Ok(n)
        };
        if !options.ca_file.is_empty() && add_pem(Path::new(&options.ca_file))? == 0 {
            return Err(reg_err(format!(
                "no certificate found in {}",
                options.ca_file
            )));
        }
        let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if system.exists() {
            let _ = add_pem(system);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| EngineError::Internal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| EngineError::Internal(format!("HTTP client: {e}")))?;
        let scheme = if insecure { "http" } else { "https" };
        Ok(Registry {
            host: host.to_string(),
            base: format!("{scheme}://{host}"),
            http,
            auth: auth.filter(|a| !a.username.is_empty() || !a.identity_token.is_empty()),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
            insecure,
            withheld: std::sync::Mutex::new(None),
            notify: None,
        })
    }

    /// Sends notices (credentials withheld) to `tx` as progress lines.
    fn with_notices(mut self, tx: mpsc::Sender<Progress>) -> Registry {
        self.notify = Some(tx);
        self
    }

    /// Whether credentials may go to the token realm `realm`: only to the
    /// registry's own host, over https, or over plain http when the registry
    /// itself is loopback or named insecure. `Err` says why not.
    fn credentials_allowed(&self, realm: &reqwest::Url) -> std::result::Result<(), String> {
        let own = reqwest::Url::parse(&self.base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let realm_host = realm
            .host_str()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if realm_host != own {
            return Err(format!(
                "the token server {realm_host:?} is not the registry's host {own:?}"
            ));
        }
        match realm.scheme() {
            "https" => Ok(()),
            "http" if self.insecure || is_loopback_host(&own) => Ok(()),
            other => Err(format!(
                "the token server is reached over {other}, not https"
            )),
        }
    }

    /// Records (and tells the user once) that credentials were withheld.
    fn note_withheld(&self, realm: &str, reason: &str) {
        let note = format!(
            "credentials for {} were not sent to the token server {realm}: {reason}; the request went anonymously",
            self.host
        );
        let mut w = self.withheld.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            tracing::warn!("{note}");
            if let Some(tx) = &self.notify {
                let _ = tx.try_send(progress("", &format!("Warning: {note}"), 0, 0));
            }
            *w = Some(note);
        }
    }

    /// `; note: credentials … withheld` for auth errors, when that happened.
    fn withheld_note(&self) -> String {
        self.withheld
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|n| format!("; note: {n}"))
            .unwrap_or_default()
    }

    fn basic(&self) -> Option<String> {
        use base64::Engine as _;
        self.auth
            .as_ref()
            .filter(|a| !a.username.is_empty())
            .map(|a| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{}:{}", a.username, a.password))
                )
            })
    }

    /// Gets a bearer token for `scope` from the challenge's realm.
    async fn fetch_token(&self, challenge: &str, scope: &str) -> Result<String> {
        let params = parse_challenge(challenge);
        let realm = params.get("realm").ok_or_else(|| {
            reg_err(format!(
                "registry {} sent a bearer challenge without realm",
                self.host
            ))
        })?;
        let mut url = reqwest::Url::parse(realm).map_err(|e| {
            reg_err(format!(
                "registry {} sent a bad token realm {realm:?}: {e}",
                self.host
            ))
        })?;
        // The realm as parsed (control characters escaped), for messages.
        let realm = url.as_str().to_string();
        let realm = realm.as_str();
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                q.append_pair("service", service);
            }
            if !scope.is_empty() {
                q.append_pair("scope", scope);
            }
        }
        let basic = match self.basic() {
            Some(b) => match self.credentials_allowed(&url) {
                Ok(()) => Some(b),
                Err(reason) => {
                    self.note_withheld(realm, &reason);
                    None
                }
            },
            None => None,
        };
        let sent_credentials = basic.is_some();
        let mut req = self.http.get(url);
        if let Some(b) = basic {
            req = req.header(AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|e| net_err(&self.host, e))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(EngineError::InvalidArgument(if sent_credentials {
                format!(
                    "unauthorized: incorrect username or password for {} (flotilla login {})",
                    self.host, self.host
                )
            } else {
                format!(
                    "unauthorized: the token server {realm} refused an anonymous request for {}{}",
                    self.host,
                    self.withheld_note()
                )
            }));
        }
        if !resp.status().is_success() {
            return Err(reg_err(format!("token server answered {}", resp.status())));
        }
        let bytes = read_capped(&self.host, resp, MAX_TOKEN_REPLY, "token reply").await?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| reg_err(format!("bad token response: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| reg_err("token response without token"))
    }

    /// Sends a request with whatever authorization the registry asks for:
    /// on a 401 it answers the challenge (Basic or Bearer) and retries once.
    /// `body` must be re-creatable, hence a closure.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        scope: &str,
        body: &(dyn Fn() -> Option<reqwest::Body> + Sync),
    ) -> Result<reqwest::Response> {
        let cached = self.tokens.lock().await.get(scope).cloned();
        let mut auth = cached.map(|t| format!("Bearer {t}"));
        for attempt in 0..2 {
            let mut req = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            if let Some(a) = &auth {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(b) = body() {
                req = req.body(b);
            }
            let resp = req.send().await.map_err(|e| net_err(&self.host, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                if resp.status() == StatusCode::UNAUTHORIZED {
                    return Err(EngineError::InvalidArgument(format!(
                        "unauthorized: authentication required by {} (use flotilla login {}){}",
                        self.host,
                        self.host,
                        self.withheld_note()
                    )));
                }
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if challenge.to_ascii_lowercase().starts_with("bearer") {
                let token = self.fetch_token(&challenge, scope).await?;
                self.tokens
                    .lock()
                    .await
                    .insert(scope.to_string(), token.clone());
                auth = Some(format!("Bearer {token}"));
            } else {
                auth = Some(self.basic().ok_or_else(|| {
                    EngineError::InvalidArgument(format!(
                        "unauthorized: {} needs a username and password (flotilla login {})",
                        self.host, self.host
                    ))
                })?);
            }
        }
        Err(EngineError::Internal("unreachable".into()))
    }

    async fn get_document(
        &self,
        repo: &str,
        reference: &str,
        scope: &str,
    ) -> Result<(Vec<u8>, String, String)> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json",
            ),
        );
        let resp = self
            .send(Method::GET, &url, headers, scope, &|| None)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(EngineError::Image(crate::image::ImageError::NotFound(
                format!(
                    "{repo}:{reference} (manifest unknown to registry {})",
                    self.host
                ),
            )));
        }
        if !resp.status().is_success() {
            return Err(reg_err(format!(
                "registry {} answered {} for {repo}:{reference}",
                self.host,
                resp.status()
            )));
        }
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let bytes = read_capped(
            &self.host,
            resp,
            MAX_DOCUMENT,
            &format!("manifest {repo}:{reference}"),
        )
        .await?;
        let digest = sha256(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(EngineError::Image(
                crate::image::ImageError::DigestMismatch {
                    what: format!("manifest {repo}@{reference}"),
                    expected: reference.to_string(),
                    actual: digest,
                },
            ));
        }
        Ok((bytes, media_type, digest))
    }

    /// Streams a blob into a new temp file while hashing and counting it:
    /// never more bytes than the descriptor's size (or, without one, than
    /// `target.cap`), never below the free-space reserve, and the file is
    /// kept only when its length and digest match the descriptor. Any error
    /// removes the partial file.
    async fn fetch_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        scope: &str,
        target: BlobTarget<'_>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<PartialFile> {
        let what = format!("blob {} from registry {}", desc.digest, self.host);
        if desc.size > target.cap {
            return Err(EngineError::Image(ImageError::TooLarge {
                what: format!("{what} (its descriptor declares {} bytes)", desc.size),
                limit: target.cap,
                hint: target.hint,
            }));
        }
        let (limit, hint) = if desc.size > 0 {
            (desc.size, "; the size its descriptor declares")
        } else {
            (target.cap, target.hint)
        };
        let url = format!("{}/v2/{repo}/blobs/{}", self.base, desc.digest);
        let resp = self
            .send(Method::GET, &url, HeaderMap::new(), scope, &|| None)
            .await?;
        if !resp.status().is_success() {
            return Err(reg_err(format!(
                "registry {} answered {} for blob {}",
                self.host,
                resp.status(),
                desc.digest
            )));
        }
        if let Some(n) = resp.content_length().filter(|n| *n > limit) {
            return Err(EngineError::Image(ImageError::TooLarge {
                what: format!("{what} (it announces {n} bytes)"),
                limit,
                hint,
            }));
        }
        let dest = target.dest;
        let (guard, file) =
            PartialFile::create(dest.clone()).map_err(EngineError::io("create", &dest))?;
        let mut file = tokio::fs::File::from_std(file);
        let mut meter = Meter::new(what.clone(), limit, hint).watching(target.space.clone());
        let mut hasher = sha2::Sha256::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| net_err(&self.host, e))?;
            meter.add(chunk.len() as u64)?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(EngineError::io("write", &dest))?;
            progress(meter.count());
        }
        file.flush()
            .await
            .map_err(EngineError::io("write", &dest))?;
        drop(file);
        if desc.size > 0 && meter.count() != desc.size {
            return Err(reg_err(format!(
                "{what} ended after {} bytes; its descriptor says {}",
                meter.count(),
                desc.size
            )));
        }
        let actual = Digest::from_hasher(hasher);
        if actual != desc.digest {
            return Err(EngineError::Image(ImageError::DigestMismatch {
                what: format!("blob from {}", self.host),
                expected: desc.digest.to_string(),
                actual: actual.to_string(),
            }));
        }
        Ok(guard)
    }

    async fn blob_exists(&self, repo: &str, digest: &str, scope: &str) -> Result<bool> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self
            .send(Method::HEAD, &url, HeaderMap::new(), scope, &|| None)
            .await?;
        Ok(resp.status().is_success())
    }

    /// Monolithic upload: POST to open a session, PUT the content with its digest.
    async fn push_blob(&self, repo: &str, digest: &str, path: &Path, scope: &str) -> Result<()> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send(Method::POST, &url, headers, scope, &|| None)
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(reg_err(format!(
                "registry {} refused an upload: {}",
                self.host,
                resp.status()
            )));
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| reg_err("upload answer without Location"))?;
        let mut put_url = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        };
        put_url.push(if put_url.contains('?') { '&' } else { '?' });
        put_url.push_str(&format!("digest={digest}"));
        let size = tokio::fs::metadata(path)
            .await
            .map_err(EngineError::io("stat", path))?
            .len();
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let path_owned = path.to_path_buf();
        let body = move || -> Option<reqwest::Body> {
            let file = std::fs::File::open(&path_owned).ok()?;
            Some(reqwest::Body::wrap_stream(tokio_util_stream(file)))
        };
        let resp = self
            .send(Method::PUT, &put_url, headers, scope, &body)
            .await?;
        if resp.status() != StatusCode::CREATED {
            let text = error_text(resp).await;
            return Err(reg_err(format!(
                "registry {} refused blob {digest}: {}",
                self.host,
                text.trim()
            )));
        }
        Ok(())
    }

    async fn push_manifest(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        body: Vec<u8>,
        scope: &str,
    ) -> Result<()> {
        let url = format!("{}/v2/{repo}/manifests/{tag}", self.base);
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|e| EngineError::Internal(e.to_string()))?,
        );
        let resp = self
            .send(Method::PUT, &url, headers, scope, &|| {
                Some(reqwest::Body::from(body.clone()))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            let text = error_text(resp).await;
            return Err(reg_err(format!(
                "registry {} refused the manifest: {}",
                self.host,
                text.trim()
            )));
        }
        Ok(())
    }
}

/// A file as a stream of byte chunks (for streaming uploads).
fn tokio_util_stream(
    file: std::fs::File,
) -> impl tokio_stream::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = file;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// `Bearer realm="…",service="…",scope="…"` → its parameters.
fn parse_challenge(header: &str) -> HashMap<String, String> {
    let rest = header.split_once(' ').map_or("", |(_, r)| r);
    let mut out = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_string();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
            chars.next();
        } else {
            value = chars
                .by_ref()
                .take_while(|c| *c != ',')
                .collect::<String>()
                .trim()
                .to_string();
        }
        out.insert(key.to_ascii_lowercase(), value);
    }
    out
}

/// The first 12 hex digits of a digest we computed or stored, for progress
/// lines only (never a file name).
fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn progress(id: &str, status: &str, current: u64, total: u64) -> Progress {
    Progress {
        id: id.to_string(),
        status: status.to_string(),
        current,
        total,
        error: String::new(),
    }
}

/// Parses a manifest or index; a descriptor with a malformed digest (say
/// `sha256:../../x`) refuses the whole document here.
fn parse_manifest(host: &str, repo: &str, reference: &str, bytes: &[u8]) -> Result<Manifest> {
    serde_json::from_slice(bytes).map_err(|e| {
        reg_err(format!(
            "registry {host} sent an invalid manifest for {repo}:{reference}: {e}"
        ))
    })
}

fn registry_of(reference: &Reference) -> Result<String> {
    reference.registry.clone().ok_or_else(|| {
        reg_err(format!(
            "no registry in {reference}: Flotilla has no default registry; name one, e.g. 127.0.0.1:5000/{}",
            reference.repository
        ))
    })
}

impl Engine {
    /// Pulls an image into the store.
    pub async fn pull(
        self: &Arc<Self>,
        req: PullRequest,
        tx: mpsc::Sender<Progress>,
    ) -> Result<()> {
        let reference = Reference::parse(&req.image).map_err(|e| EngineError::Image(e.into()))?;
        let host = registry_of(&reference)?;
        let registry = Registry::new(&host, &req.options.unwrap_or_default(), req.auth)?
            .with_notices(tx.clone());
        let repo = reference.repository.clone();
        let scope = format!("repository:{repo}:pull");
        let wanted = reference
            .digest
            .clone()
            .or_else(|| reference.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let (mut bytes, mut media_type, mut digest) =
            registry.get_document(&repo, &wanted, &scope).await?;
        let mut manifest = parse_manifest(&host, &repo, &wanted, &bytes)?;
        if manifest.schema_version == 1 {
            return Err(reg_err(
                "schema 1 manifests are not supported; push the image again with a current tool",
            ));
        }
        if media_type.is_empty() {
            media_type = manifest.media_type.clone();
        }
        if media_type == OCI_INDEX || media_type == DOCKER_LIST || !manifest.manifests.is_empty() {
            let pick = manifest
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                // No other architecture stands in: its binaries cannot run here.
                .ok_or_else(|| {
                    let offered: Vec<String> = manifest
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    reg_err(format!(
                        "{reference} has no linux/amd64 image (it has: {})",
                        offered.join(", ")
                    ))
                })?;
            let chosen = pick.digest.to_string();
            (bytes, media_type, digest) = registry.get_document(&repo, &chosen, &scope).await?;
            manifest = parse_manifest(&host, &repo, &chosen, &bytes)?;
        }
        let _ = (&bytes, &media_type);
        let config_desc = manifest
            .config
            .as_ref()
            .ok_or_else(|| reg_err("the manifest has no config"))?;
        let space = self.images.space();
        let limits = self.images.limits();
        // Before writing anything: room for the config.
        space.check(config_desc.size)?;
        // The config (small): fetch and verify.
        let work = self.images.temp_dir("pull")?;
        let config_file = registry
            .fetch_blob(
                &repo,
                config_desc,
                &scope,
                BlobTarget {
                    dest: work.path().join("config"),
                    cap: MAX_DOCUMENT,
                    hint: " (the limit for image configs)",
                    space: &space,
                },
                &mut |_| {},
            )
            .await?;
        let raw_config = tokio::fs::read(config_file.path())
            .await
            .map_err(EngineError::io("read", config_file.path()))?;
        drop(config_file);
        let diff_ids = crate::image::load::config_diff_ids(
            &raw_config,
            &format!("{} from {host}", config_desc.digest),
        )?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(reg_err(
                "the manifest and its config disagree on the number of layers",
            ));
        }
        // Before downloading: room for the missing layers as declared.
        let declared = manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .filter(|(_, d)| !self.images.has_layer(d.as_str()))
            .map(|(l, _)| l.size)
            .fold(0, u64::saturating_add);
        space.check(declared)?;
        for layer in &manifest.layers {
            let _ = tx
                .send(progress(
                    layer.digest.short(),
                    "Pulling fs layer",
                    0,
                    layer.size,
                ))
                .await;
        }
        // Layers: download each missing one to the store's tmp (named by
        // position), then unpack.
        let mut fetched: Vec<(PartialFile, Digest, Digest)> = Vec::new();
        for (n, (layer, diff_id)) in manifest.layers.iter().zip(&diff_ids).enumerate() {
            let id = layer.digest.short().to_string();
            if self.images.has_layer(diff_id.as_str()) {
                let _ = tx
                    .send(progress(&id, "Already exists", layer.size, layer.size))
                    .await;
                continue;
            }
            let txp = tx.clone();
            let total = layer.size;
            let idp = id.clone();
            let mut last = 0u64;
            let file = registry
                .fetch_blob(
                    &repo,
                    layer,
                    &scope,
                    BlobTarget {
                        dest: work.path().join(format!("layer-{n}")),
                        cap: limits.max_layer_size,
                        hint: "; the daemon's --max-layer-size sets this limit",
                        space: &space,
                    },
                    &mut |done| {
                        if done - last >= 256 * 1024 || done == total {
                            last = done;
                            let _ = txp.try_send(progress(&idp, "Downloading", done, total));
                        }
                    },
                )
                .await?;
            let _ = tx
                .send(progress(&id, "Download complete", total, total))
                .await;
            fetched.push((file, layer.digest.clone(), diff_id.clone()));
        }
        let engine = self.clone();
        let tag = reference.tagged_name();
        let repo_digest = format!("{}@{digest}", reference.name());
        let image_id = tokio::task::spawn_blocking(move || -> Result<String> {
            let pin = engine.images.pin_layers();
            for (file, blob_digest, diff_id) in &fetched {
                engine
                    .images
                    .add_layer(&pin, file.path(), blob_digest, Some(diff_id))?;
            }
            let tags: Vec<String> = tag.into_iter().collect();
            let id = engine
                .images
                .add_image(&raw_config, &tags, &[repo_digest])?;
            drop(pin);
            drop(fetched);
            drop(work);
            Ok(id)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        let _ = tx
            .send(progress("", &format!("Digest: {digest}"), 0, 0))
            .await;
        let _ = tx
            .send(progress(
                "",
                &format!("Status: Downloaded {reference} ({})", short(&image_id)),
                0,
                0,
            ))
            .await;
        Ok(())
    }

    /// Pushes an image from the store (OCI manifest; layers as stored).
    pub async fn push(
        self: &Arc<Self>,
        req: PushRequest,
        tx: mpsc::Sender<Progress>,
    ) -> Result<()> {
        let reference = Reference::parse(&req.image).map_err(|e| EngineError::Image(e.into()))?;
        let host = registry_of(&reference)?;
        let image = self.images.resolve(&req.image)?;
        let registry = Registry::new(&host, &req.options.unwrap_or_default(), req.auth)?
            .with_notices(tx.clone());
        let repo = reference.repository.clone();
        let scope = format!("repository:{repo}:pull,push");
        let mut layers = Vec::new();
        for diff_id in &image.config.rootfs.diff_ids {
            let rec = self.images.layer_record(diff_id).ok_or_else(|| {
                EngineError::Internal(format!(
                    "layer {diff_id} of the image is missing from the store"
                ))
            })?;
            let path = self.images.recorded_blob_path(&rec.blob)?;
            let size = tokio::fs::metadata(&path)
                .await
                .map_err(EngineError::io("stat", &path))?
                .len();
            let media_type = match rec.compression.as_str() {
                "gzip" => "application/vnd.oci.image.layer.v1.tar+gzip",
                "zstd" => "application/vnd.oci.image.layer.v1.tar+zstd",
                _ => "application/vnd.oci.image.layer.v1.tar",
            };
            layers.push((rec.blob.clone(), path, size, media_type));
        }
        for (digest, path, size, _) in &layers {
            let id = short(digest);
            if registry.blob_exists(&repo, digest, &scope).await? {
                let _ = tx
                    .send(progress(&id, "Layer already exists", *size, *size))
                    .await;
                continue;
            }
            let _ = tx.send(progress(&id, "Pushing", 0, *size)).await;
            registry.push_blob(&repo, digest, path, &scope).await?;
            let _ = tx.send(progress(&id, "Pushed", *size, *size)).await;
        }
        let config_digest = image.id.clone();
        let work = self.images.temp_dir("push")?;
        let config_path = work.path().join("config");
        tokio::fs::write(&config_path, &image.raw_config[..])
            .await
            .map_err(EngineError::io("write", &config_path))?;
        if !registry.blob_exists(&repo, &config_digest, &scope).await? {
            registry
                .push_blob(&repo, &config_digest, &config_path, &scope)
                .await?;
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": image.raw_config.len()},
            "layers": layers.iter().map(|(d, _, s, m)| serde_json::json!({"mediaType": m, "digest": d, "size": s})).collect::<Vec<_>>(),
        });
        let body =
            serde_json::to_vec(&manifest).map_err(|e| EngineError::Internal(e.to_string()))?;
        let digest = sha256(&body);
        let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
        registry
            .push_manifest(&repo, &tag, OCI_MANIFEST, body, &scope)
            .await?;
        let _ = tx
            .send(progress(
                "",
                &format!(
                    "{tag}: digest: {digest} size: {}",
                    manifest.to_string().len()
                ),
                0,
                0,
            ))
            .await;
        let _ = DOCKER_MANIFEST;
        Ok(())
    }

    /// Checks credentials against a registry (`GET /v2/`).
    pub async fn check_login(self: &Arc<Self>, req: RegistryLoginRequest) -> Result<()> {
        let registry = Registry::new(&req.registry, &req.options.unwrap_or_default(), req.auth)?;
        if registry.auth.is_none() {
            return Err(reg_err("a username is required"));
        }
        let url = format!("{}/v2/", registry.base);
        let resp = registry
            .send(Method::GET, &url, HeaderMap::new(), "", &|| None)
            .await?;
        let withheld = registry.withheld_note();
        if !withheld.is_empty() {
            return Err(reg_err(format!(
                "login to {} not verified{withheld}",
                req.registry
            )));
        }
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(reg_err(format!(
                "login to {} failed: {}",
                req.registry,
                resp.status()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_challenge, Registry};
    use agent_common::proto::RegistryOptions;

    #[test]
    fn credentials_go_only_to_token_realms_on_the_registry_host() {
        let allowed = |host: &str, insecure: bool, realm: &str| {
            let options = RegistryOptions {
                insecure_registries: if insecure {
                    vec![host.to_string()]
                } else {
                    Vec::new()
                },
                ..RegistryOptions::default()
            };
            let r = Registry::new(host, &options, None).expect("registry");
            r.credentials_allowed(&reqwest::Url::parse(realm).expect("url"))
                .is_ok()
        };
        // https on the registry's own host, any port, any case.
        assert!(allowed(
            "registry.example:5000",
            false,
            "https://registry.example/token"
        ));
        assert!(allowed(
            "registry.example",
            false,
            "https://REGISTRY.example:8443/t"
        ));
        // Another host, a look-alike, or plain http to a remote registry: no.
        assert!(!allowed(
            "registry.example",
            false,
            "https://auth.example/token"
        ));
        assert!(!allowed(
            "registry.example",
            false,
            "https://registry.example.evil.com/t"
        ));
        assert!(!allowed(
            "registry.example",
            false,
            "http://registry.example/token"
        ));
        assert!(!allowed(
            "registry.example",
            false,
            "ftp://registry.example/token"
        ));
        // Plain http only for a loopback or insecure registry, same host.
        assert!(allowed(
            "127.0.0.1:5000",
            false,
            "http://127.0.0.1:9000/token"
        ));
        assert!(!allowed(
            "127.0.0.1:5000",
            false,
            "http://127.0.0.2:9000/token"
        ));
        assert!(!allowed(
            "127.0.0.1:5000",
            false,
            "http://localhost:9000/token"
        ));
        assert!(allowed("[::1]:5000", false, "http://[::1]:9000/token"));
        assert!(allowed("reg.lan:5000", true, "http://reg.lan/token"));
        assert!(!allowed("reg.lan:5000", true, "http://other.lan/token"));
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let b = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(b["realm"], "Registry Realm");
    }
}
