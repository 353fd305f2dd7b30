//! TLS between two nodes' configs over loopback TCP: the good case, and each refusal the
//! issue names (another CA, a wrong name, an expired certificate, cleartext), from the side
//! that detects it; the own certificate checked at load; reload keeps the old config on error.

use super::TlsFiles;
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../../tests/common/certs.rs"]
mod certs;
use certs::Ca;

struct Site {
    _dir: tempfile::TempDir,
    ca: Ca,
    ca_path: std::path::PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("drl-ops-tls")
            .tempdir()
            .unwrap();
        let ca = Ca::new("drl test CA");
        let ca_path = ca.write(&dir.path().join("ca.crt"));
        Site {
            _dir: dir,
            ca,
            ca_path,
        }
    }
    fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }
    /// Files for `node` whose certificate says `san`, signed by `ca` (default: ours).
    fn files(&self, file: &str, san: &str, ca: Option<&Ca>, expired: bool) -> TlsFiles {
        let nf = ca.unwrap_or(&self.ca).issue(self.dir(), file, san, expired);
        TlsFiles {
            ca: self.ca_path.clone(),
            cert: nf.cert,
            key: nf.key,
        }
    }
}

/// a (client, expects `b`) against b (server, expects `a`): the client's and the server's
/// result.
async fn pair(a: &TlsConfigs, b: &TlsConfigs) -> (Result<(), TlsFailure>, Result<(), TlsFailure>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = async {
        let (s, _) = l.accept().await.unwrap();
        let mut t = accept(b, s, "a").await?;
        let mut buf = [0u8; 5];
        let _ = t.read_exact(&mut buf).await;
        let _ = t.write_all(&buf).await;
        let _ = t.flush().await;
        Ok(())
    };
    let client = async {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut t = connect(a, s, "b").await?;
        t.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        t.read_exact(&mut buf)
            .await
            .map_err(|e| failure(&e, "closed by the server"))?;
        assert_eq!(&buf, b"hello");
        Ok(())
    };
    tokio::join!(client, server)
}

fn refusal(r: Result<(), TlsFailure>) -> Refusal {
    r.expect_err("expected a refusal").refusal
}

#[tokio::test]
async fn mutual_tls_between_the_configured_nodes() {
    let s = Site::new();
    let a = load(&s.files("a", "a", None, false), "a").unwrap();
    let b = load(&s.files("b", "b", None, false), "b").unwrap();
    let (c, v) = pair(&a, &b).await;
    c.unwrap();
    v.unwrap();
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let s = Site::new();
    let other = Ca::new("someone else's CA");
    let a = load(&s.files("a", "a", None, false), "a").unwrap();
    let b = build(&s.files("b", "b", Some(&other), false), "b", false).unwrap();
    let (c, _) = pair(&a, &b).await;
    assert_eq!(refusal(c), Refusal::UnknownCa);
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused_by_the_server() {
    let s = Site::new();
    let other = Ca::new("someone else's CA");
    let a = build(&s.files("a", "a", Some(&other), false), "a", false).unwrap();
    let b = load(&s.files("b", "b", None, false), "b").unwrap();
    let (c, v) = pair(&a, &b).await;
    assert_eq!(refusal(v), Refusal::UnknownCa);
    // The client learns it from the server's alert.
    assert_eq!(refusal(c), Refusal::RefusedByPeer);
}

#[tokio::test]
async fn wrong_names_are_refused_on_both_sides() {
    let s = Site::new();
    // The server is not b.
    let a = load(&s.files("a", "a", None, false), "a").unwrap();
    let c_as_b = build(&s.files("c", "c", None, false), "b", false).unwrap();
    let (c, _) = pair(&a, &c_as_b).await;
    assert_eq!(refusal(c), Refusal::WrongName);
    // The client is not a (the server checks the one configured peer).
    let c_as_a = build(&s.files("c2", "c", None, false), "a", false).unwrap();
    let b = load(&s.files("b", "b", None, false), "b").unwrap();
    let (_, v) = pair(&c_as_a, &b).await;
    assert_eq!(refusal(v), Refusal::WrongName);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let s = Site::new();
    let a = load(&s.files("a", "a", None, false), "a").unwrap();
    let b = build(&s.files("b", "b", None, true), "b", false).unwrap();
    let (c, _) = pair(&a, &b).await;
    assert_eq!(refusal(c), Refusal::Expired);
    let a_old = build(&s.files("a2", "a", None, true), "a", false).unwrap();
    let b = load(&s.files("b2", "b", None, false), "b").unwrap();
    let (_, v) = pair(&a_old, &b).await;
    assert_eq!(refusal(v), Refusal::Expired);
}

#[tokio::test]
async fn cleartext_is_refused_by_a_tls_server() {
    let s = Site::new();
    let b = load(&s.files("b", "b", None, false), "b").unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"DRL1 a drl Hello frame in the clear")
            .await
            .unwrap();
        s
    });
    let (sock, _) = l.accept().await.unwrap();
    let f = accept(&b, sock, "a").await.expect_err("cleartext accepted");
    assert_eq!(f.refusal, Refusal::Cleartext, "{}", f.message);
    drop(client.await);
}

#[test]
fn the_own_certificate_is_checked_at_load() {
    let s = Site::new();
    let other = Ca::new("someone else's CA");
    let e = load(&s.files("x", "a", None, true), "a")
        .unwrap_err()
        .to_string();
    assert!(e.contains("validity period"), "{e}");
    let e = load(&s.files("y", "a", Some(&other), false), "a")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not signed by our [tls] ca"), "{e}");
    let e = load(&s.files("z", "c", None, false), "a")
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not name"), "{e}");
    let mut f = s.files("w", "a", None, false);
    f.key = s.dir().join("missing.key");
    let e = load(&f, "a").unwrap_err().to_string();
    assert!(e.contains("missing.key: cannot open"), "{e}");
}

#[test]
fn reload_swaps_the_certificates_and_keeps_them_on_error() {
    let s = Site::new();
    let first = s.files("a1", "a", None, false);
    init(Some(&first), "a").unwrap();
    assert_eq!(node().unwrap().files, first);
    let second = s.files("a2", "a", None, false);
    reload(Some(&second), "a").unwrap();
    assert_eq!(node().unwrap().files, second);
    let mut broken = second.clone();
    broken.cert = s.dir().join("nope.crt");
    assert!(reload(Some(&broken), "a").is_err());
    assert_eq!(
        node().unwrap().files,
        second,
        "a failed reload keeps the old certificates"
    );
}
