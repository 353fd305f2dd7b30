//! TLS 1.3 on the replication link (rustls, ring), mutual certificate authentication.
//!
//! A resource with `tls = true` wraps its TCP connection in TLS before the drl handshake: the
//! initiating node is the TLS client, the accepting node the server, and both present their
//! certificate and check the other's against the `[tls] ca`, its validity period and its
//! name: the certificate must carry the peer's node name as a DNS subjectAltName (the client
//! checks the server's like any TLS client; the server checks the client's against the one
//! peer the config names). The drl handshake and its HMAC over `secret` then run inside the
//! tunnel unchanged, so a stolen certificate alone does not open a resource.
//!
//! A peer that fails (another CA, a wrong name, an expired certificate, cleartext where TLS is
//! required, TLS where cleartext is configured) is refused with a log line that says which,
//! and counted per resource and reason (`status`' `peer_refused`, the metric
//! `drl_replication_peer_refused_total`).
//!
//! The node's certificates live in one place ([`node`]); [`reload`] (SIGHUP / `drl adjust`)
//! reads the files again and swaps them in: connections made after it use the new
//! certificates, live sessions keep theirs until they reconnect. A reload that fails keeps
//! the old ones and says why.
//!
//! Only TLS 1.3, only the ring provider's suites; ALPN `drl/1` on both sides so the link cannot
//! be confused with another TLS service on the same port.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, client::WebPkiServerVerifier, server::WebPkiClientVerifier};
use tokio_rustls::rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};

use crate::limits::TLS_PEM_FILE_BYTES_MAX;

/// This node's TLS files: the CA, its certificate chain (CN or a DNS SAN = the node name) and
/// its private key, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The link's ALPN protocol name.
pub const ALPN: &[u8] = b"drl/1";

/// Why the TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("[tls] ca: {0}")]
    Verifier(String),
}

/// The node's TLS configuration: one client and one server config from the same files.
pub struct TlsConfigs {
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
    pub files: TlsFiles,
    /// sha256 (hex) of this node's own certificate (the leaf): status shows which one is in
    /// use, so a rotation can be checked.
    pub cert_sha256: String,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfigs")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

static NODE: RwLock<Option<Arc<TlsConfigs>>> = RwLock::new(None);

/// The node's current TLS configuration (None: no `[tls]` / certificate configured).
pub fn node() -> Option<Arc<TlsConfigs>> {
    NODE.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Load `files` for node `node_name` and make them the node's (daemon start). `None` clears.
pub fn init(files: Option<&TlsFiles>, node_name: &str) -> Result<(), TlsError> {
    let new = files.map(|f| load(f, node_name)).transpose()?;
    *NODE.write().unwrap_or_else(|p| p.into_inner()) = new.map(Arc::new);
    Ok(())
}

/// Read the certificate files again and use them for every new connection (SIGHUP, `drl
/// adjust`). On error the previous certificates stay in use.
pub fn reload(files: Option<&TlsFiles>, node_name: &str) -> Result<(), TlsError> {
    init(files, node_name)?;
    tracing::info!(files = ?files, "TLS certificates reloaded");
    Ok(())
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let mut buf = Vec::new();
    f.take(TLS_PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if buf.len() as u64 > TLS_PEM_FILE_BYTES_MAX {
        return Err(err(format!("larger than {TLS_PEM_FILE_BYTES_MAX} bytes")));
    }
    Ok(buf)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_bounded(path)?;
    let err = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("holds no certificate".into()));
    }
    Ok(certs)
}

/// Build the node's configs from `files`, checking that its own certificate is signed by the
/// CA, valid now and names `node_name` (so a mistake shows at start, not at the peer).
pub fn load(files: &TlsFiles, node_name: &str) -> Result<TlsConfigs, TlsError> {
    build(files, node_name, true)
}

/// [`load`]; `check_own: false` skips the check of the own certificate (tests make peers
/// with bad certificates this way).
pub(crate) fn build(
    files: &TlsFiles,
    node_name: &str,
    check_own: bool,
) -> Result<TlsConfigs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs(&files.ca)? {
        roots.add(c).map_err(|e| TlsError::File {
            path: files.ca.display().to_string(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&files.cert)?;
    let chain0 = chain[0].clone();
    let key_pem = read_bounded(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
        path: files.key.display().to_string(),
        reason: format!("no PEM private key: {e}"),
    })?;
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let name = server_name(node_name).map_err(|reason| TlsError::File {
        path: files.cert.display().to_string(),
        reason,
    })?;
    use rustls::client::danger::ServerCertVerifier;
    if check_own {
        server_verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map_err(|e| TlsError::File {
                path: files.cert.display().to_string(),
                reason: format!(
                    "this node's certificate ({node_name}) is unusable: {}",
                    explain(&e).1
                ),
            })?;
    }
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain.clone(), key.clone_key())?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsConfigs {
        client: Arc::new(client),
        server: Arc::new(server),
        files: files.clone(),
        cert_sha256: fingerprint(&chain0),
    })
}

fn server_name(node: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(node.to_owned())
        .map_err(|_| format!("node name {node:?} cannot be a certificate DNS name"))
}

/// Why a peer was refused, as counted in status and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its certificate is not signed by our `[tls] ca`.
    UnknownCa,
    /// Its certificate does not name the configured peer node.
    WrongName,
    /// Its certificate expired (or is not valid yet).
    Expired,
    /// It presented no certificate.
    NoCertificate,
    /// It speaks cleartext to a resource with `tls = true`.
    Cleartext,
    /// It speaks TLS to a resource without `tls`.
    PeerUsesTls,
    /// It refused our certificate (its alert names why).
    RefusedByPeer,
    /// Any other TLS failure.
    TlsError,
    /// The connection ended before the TLS handshake finished: the peer may not be up yet
    /// (or closed on TLS it does not expect); logged, not counted as a refusal.
    Closed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownCa => "unknown_ca",
            Refusal::WrongName => "wrong_name",
            Refusal::Expired => "expired",
            Refusal::NoCertificate => "no_certificate",
            Refusal::Cleartext => "cleartext",
            Refusal::PeerUsesTls => "peer_uses_tls",
            Refusal::RefusedByPeer => "refused_by_peer",
            Refusal::TlsError => "tls_error",
            Refusal::Closed => "closed",
        }
    }
}

/// Classify a rustls error and say it in words.
pub fn explain(e: &rustls::Error) -> (Refusal, String) {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => (
                Refusal::UnknownCa,
                "certificate not signed by our [tls] ca".into(),
            ),
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => (
                Refusal::Expired,
                format!("certificate outside its validity period ({c:?})"),
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                (
                    Refusal::WrongName,
                    format!("certificate does not name the peer node ({c:?})"),
                )
            }
            other => (Refusal::TlsError, format!("bad certificate: {other:?}")),
        },
        E::NoCertificatesPresented => (
            Refusal::NoCertificate,
            "the peer presented no certificate".into(),
        ),
        E::AlertReceived(a) => (
            Refusal::RefusedByPeer,
            format!("the peer refused our certificate or TLS (alert {a:?})"),
        ),
        E::InvalidMessage(m) => (
            Refusal::TlsError,
            format!("not TLS, or a broken TLS message ({m:?})"),
        ),
        other => (Refusal::TlsError, other.to_string()),
    }
}

/// The rustls error inside an I/O error from tokio-rustls, classified.
pub fn explain_io(e: &std::io::Error) -> Option<(Refusal, String)> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .map(explain)
}

/// A failed TLS setup with a peer.
#[derive(Debug)]
pub struct TlsFailure {
    pub refusal: Refusal,
    pub message: String,
}

/// TLS client side (this node initiates): verify the server is `peer_node`.
pub async fn connect(
    cfg: &TlsConfigs,
    stream: TcpStream,
    peer_node: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsFailure> {
    let name = server_name(peer_node).map_err(|message| TlsFailure {
        refusal: Refusal::TlsError,
        message,
    })?;
    let tls = tokio_rustls::TlsConnector::from(cfg.client.clone())
        .connect(name, stream)
        .await
        .map_err(|e| failure(&e, "the peer closed the connection during the TLS handshake (no TLS configured there, or it refused us)"))?;
    note_peer_cert(peer_node, tls.get_ref().1.peer_certificates());
    Ok(tls)
}

/// TLS server side (the peer initiates): refuse cleartext at once (its first byte is not a
/// TLS handshake record), verify the client certificate against the CA and that it names
/// `peer_node`.
pub async fn accept(
    cfg: &TlsConfigs,
    stream: TcpStream,
    peer_node: &str,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, TlsFailure> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] == 0x16 => {}
        Ok(0) => {
            return Err(TlsFailure {
                refusal: Refusal::Closed,
                message: "closed before the TLS handshake".into(),
            })
        }
        Ok(_) => {
            return Err(TlsFailure {
                refusal: Refusal::Cleartext,
                message: "the peer speaks cleartext, but this resource has tls = true".into(),
            })
        }
        Err(e) => {
            return Err(TlsFailure {
                refusal: Refusal::TlsError,
                message: format!("reading: {e}"),
            })
        }
    }
    let tls = tokio_rustls::TlsAcceptor::from(cfg.server.clone())
        .accept(stream)
        .await
        .map_err(|e| {
            failure(
                &e,
                "the peer closed the connection during the TLS handshake",
            )
        })?;
    let name = server_name(peer_node).map_err(|message| TlsFailure {
        refusal: Refusal::TlsError,
        message,
    })?;
    let ok = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| webpki::EndEntityCert::try_from(c).ok())
        .is_some_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok());
    if !ok {
        return Err(TlsFailure {
            refusal: Refusal::WrongName,
            message: format!("the peer's certificate does not name {peer_node:?} (the configured peer node) as a DNS subjectAltName"),
        });
    }
    note_peer_cert(peer_node, tls.get_ref().1.peer_certificates());
    Ok(tls)
}

fn fingerprint(c: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(c.as_ref()))
}

/// sha256 of the certificate each peer node presented at its last accepted handshake.
static PEER_CERTS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

fn note_peer_cert(peer_node: &str, chain: Option<&[CertificateDer<'_>]>) {
    if let Some(c) = chain.and_then(|c| c.first()) {
        PEER_CERTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer_node.to_owned(), fingerprint(c));
    }
}

/// sha256 (hex) of the certificate `peer_node` presented at the last accepted TLS handshake.
pub fn peer_cert_sha256(peer_node: &str) -> Option<String> {
    PEER_CERTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(peer_node)
        .cloned()
}

/// sha256 (hex) of this node's certificate in use for new connections.
pub fn own_cert_sha256() -> Option<String> {
    node().map(|c| c.cert_sha256.clone())
}

fn failure(e: &std::io::Error, eof: &str) -> TlsFailure {
    match explain_io(e) {
        Some((refusal, message)) => TlsFailure { refusal, message },
        None if matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        ) =>
        {
            TlsFailure {
                refusal: Refusal::Closed,
                message: format!("{eof} ({e})"),
            }
        }
        None => TlsFailure {
            refusal: Refusal::TlsError,
            message: e.to_string(),
        },
    }
}

type Counts = BTreeMap<String, BTreeMap<&'static str, u64>>;
static REFUSED: Mutex<Counts> = Mutex::new(BTreeMap::new());

/// Count a refused peer of `resource`.
pub fn count_refused(resource: &str, why: Refusal) {
    let mut m = REFUSED.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry(resource.to_owned())
        .or_default()
        .entry(why.as_str())
        .or_default() += 1;
}

/// `{reason: count}` of the peers refused for `resource` since the daemon started.
pub fn refused_json(resource: &str) -> serde_json::Value {
    let m = REFUSED.lock().unwrap_or_else(|p| p.into_inner());
    serde_json::to_value(m.get(resource).cloned().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
